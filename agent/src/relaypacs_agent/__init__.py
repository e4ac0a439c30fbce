"""RelayPACS agent."""
