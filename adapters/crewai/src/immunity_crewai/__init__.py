"""immunity_crewai."""
