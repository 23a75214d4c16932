"""Adapters: one per kind of IM endpoint, registered by name."""
