"""immunity_data."""
