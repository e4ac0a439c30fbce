"""Rule sets in the database: every hub replica and worker routes by the same, newest version.

Rules come either from a file (``RELAYPACS_HUB_RULES_FILE``, TOML; imported at start and by
``POST /api/v1/rules/reload``) or from the admin API (``PUT /api/v1/rules``), never both: with a
file configured the API refuses edits, so the file stays the truth. Each change is a new version
row; an import of unchanged content adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.db.models import RoutingRuleSet
from relaypacs_shared.errors import RoutingError
from relaypacs_shared.routing import RuleSet, parse_rule_set


def load_rules_file(path: Path) -> RuleSet:
    """Parse and validate a TOML rules file; ``RoutingError`` says what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingError(f"cannot read rules file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"rules file {path} is not valid TOML: {exc}") from exc
    try:
        return parse_rule_set(data)
    except RoutingError as exc:
        raise RoutingError(f"{path}: {exc}") from exc


def canonical_json(rules: RuleSet) -> str:
    return json.dumps(
        rules.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
    )


@dataclass(frozen=True)
class StoredRuleSet:
    version: int
    source: str
    created_at: datetime
    rules: RuleSet


class RuleStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self._parsed: dict[int, RuleSet] = {}

    def _parse(self, row: RoutingRuleSet) -> StoredRuleSet:
        rules = self._parsed.get(row.version)
        if rules is None:
            rules = parse_rule_set(json.loads(row.body_json))
            self._parsed[row.version] = rules
        return StoredRuleSet(row.version, row.source, row.created_at, rules)

    async def current(self, session: AsyncSession | None = None) -> StoredRuleSet | None:
        """The rule set in force, or None when no rules were ever configured."""
        if session is None:
            async with self.sessionmaker() as own:
                return await self.current(own)
        row = await session.scalar(
            select(RoutingRuleSet).order_by(RoutingRuleSet.version.desc()).limit(1)
        )
        return None if row is None else self._parse(row)

    async def history(self, limit: int = 20) -> list[StoredRuleSet]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                select(RoutingRuleSet).order_by(RoutingRuleSet.version.desc()).limit(limit)
            )
            return [self._parse(r) for r in rows]

    async def save(self, rules: RuleSet, source: str) -> tuple[StoredRuleSet, bool]:
        """Store ``rules`` as the newest version unless they equal it; (stored, changed)."""
        body = canonical_json(rules)
        digest = hashlib.sha256(body.encode()).hexdigest()
        async with self.sessionmaker() as session, session.begin():
            latest = await session.scalar(
                select(RoutingRuleSet).order_by(RoutingRuleSet.version.desc()).limit(1)
            )
            if latest is not None and latest.sha256 == digest and latest.source == source:
                return self._parse(latest), False
            row = RoutingRuleSet(source=source[:255], sha256=digest, body_json=body)
            session.add(row)
            await session.flush()
            self._parsed[row.version] = rules
            return StoredRuleSet(row.version, row.source, row.created_at, rules), True
