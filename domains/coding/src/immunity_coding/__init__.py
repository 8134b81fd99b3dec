"""immunity_coding."""
