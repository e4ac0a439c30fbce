"""RelayPACS dev."""
