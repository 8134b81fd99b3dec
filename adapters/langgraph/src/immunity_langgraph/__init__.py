"""immunity_langgraph."""
