"""The embedded reference IM service (see PROTOCOL.md)."""
