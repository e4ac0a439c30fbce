"""RelayPACS shared."""
