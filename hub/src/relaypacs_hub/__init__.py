"""RelayPACS hub."""
