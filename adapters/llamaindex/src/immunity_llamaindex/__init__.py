"""immunity_llamaindex."""
