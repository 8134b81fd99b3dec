"""immunity_research."""
