"""The hub's services: the database work behind each API route, one module per area.

Routes parse, check the caller and translate; services read and write through SQLAlchemy and
refuse with ``relaypacs_shared.errors`` (``services/errors.py`` adds the hub's own problem codes).
No service knows HTTP (import-linter).
"""
