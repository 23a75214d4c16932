"""pytest plugin for im-harness (filled in by the plugin work)."""
