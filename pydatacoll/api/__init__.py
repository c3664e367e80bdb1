"""The REST API (Klein)."""
