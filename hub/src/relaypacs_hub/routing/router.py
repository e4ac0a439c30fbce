"""Decide where a study goes: the rule set in force, evaluated on the study's facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.routing.facts import gather_facts, series_representatives
from relaypacs_hub.routing.rules import RuleStore
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_shared.routing import (
    Decision,
    RuleSet,
    StudyFacts,
    evaluate,
    route_everywhere,
)


@dataclass(frozen=True)
class Routing:
    decision: Decision
    facts: StudyFacts
    rule_set_version: int | None  # None: no rules configured, every destination


class Router:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        destinations: Sequence[str],
        rules: RuleStore,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.store = store
        self.destinations = sorted(destinations)
        self.rules = rules

    async def decide(
        self,
        study_uid: str,
        *,
        service_level: str,
        facility: str | None,
        now: datetime | None = None,
        rule_set: RuleSet | None = None,
    ) -> Routing:
        """Route one study. ``rule_set`` evaluates proposed rules instead of those in force."""
        version: int | None = None
        if rule_set is None:
            stored = await self.rules.current()
            if stored is not None:
                rule_set, version = stored.rules, stored.version
        keys: list[str] = []
        if rule_set is not None and rule_set.needs_headers():
            async with self.sessionmaker() as session:
                keys = await series_representatives(session, study_uid)
        facts = await gather_facts(
            self.store,
            keys,
            study_uid=study_uid,
            service_level=service_level,
            facility=facility,
            tags=rule_set.referenced_tags() if rule_set is not None else set(),
        )
        if rule_set is None:
            return Routing(route_everywhere(self.destinations, service_level), facts, None)
        decision = evaluate(rule_set, facts, now or datetime.now(UTC))
        return Routing(decision, facts, version)
