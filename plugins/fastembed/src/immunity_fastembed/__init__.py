"""immunity_fastembed."""
