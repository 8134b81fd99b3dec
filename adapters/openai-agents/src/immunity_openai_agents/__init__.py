"""immunity_openai_agents."""
