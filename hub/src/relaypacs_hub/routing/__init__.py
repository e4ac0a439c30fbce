"""Routing at the hub: rule sets in the database, study facts from the object store, decisions."""
