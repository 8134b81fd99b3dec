"""immunity_hnswlib."""
