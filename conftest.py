"""Root conftest: the im-harness plugin arrives through its pytest11 entry point, not from here."""
