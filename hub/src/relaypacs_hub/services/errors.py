"""What a service refuses with: errors of ``relaypacs_shared.errors`` (the HTTP status is their
class's row in ``relaypacs_shared.wire.PROBLEMS``) that carry the hub's own stable problem code
(``unknown_job``, ``not_held``, ``last_admin``...) instead of the row's generic one."""

from __future__ import annotations

from relaypacs_shared.errors import Conflict, NotFound


class Coded:
    """Mixed into an error answered with its own ``code``."""

    code: str


class Unknown(Coded, NotFound):
    """No such thing (404)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Refused(Coded, Conflict):
    """Not in a state that allows this (409)."""

    def __init__(self, code: str, detail: str, missing: list[str] | None = None) -> None:
        super().__init__(detail, missing)
        self.code = code
