"""People at the hub: passwords (argon2), access JWTs (EdDSA), rotating refresh tokens, TOTP."""

ROLES = ("clinician", "radiographer", "radiologist", "admin")
