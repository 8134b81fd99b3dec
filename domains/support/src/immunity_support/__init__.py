"""immunity_support."""
