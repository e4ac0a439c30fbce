"""Routing rules for admins: the rule set in force, a new version (from the API or the rules
file), the history, a dry run, and the studies the rules sent nowhere."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import Study, StudyRoute
from relaypacs_hub.routing.rules import StoredRuleSet
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Refused
from relaypacs_hub.services.studies import unknown_study
from relaypacs_shared.errors import RoutingError
from relaypacs_shared.routing import Decision, RuleSet, StudyFacts, evaluate, parse_rule_set


class RulesPublic(BaseModel):
    version: int | None
    source: str | None
    managed_by: Literal["file", "api"]
    created_at: datetime | None
    rules: dict[str, Any] | None = Field(
        description="The rule set in force; null when none was ever configured (every study "
        "then goes to every destination)."
    )


def _public(stored: StoredRuleSet | None, managed_by: Literal["file", "api"]) -> RulesPublic:
    if stored is None:
        return RulesPublic(
            version=None, source=None, managed_by=managed_by, created_at=None, rules=None
        )
    return RulesPublic(
        version=stored.version,
        source=stored.source,
        managed_by=managed_by,
        created_at=stored.created_at,
        rules=stored.rules.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def _managed_by(hub: HubRuntime) -> Literal["file", "api"]:
    return "file" if hub.delivery.rules_file_managed else "api"


async def current(hub: HubRuntime) -> RulesPublic:
    return _public(await hub.delivery.rules.current(), _managed_by(hub))


async def history(hub: HubRuntime) -> list[RulesPublic]:
    return [_public(s, _managed_by(hub)) for s in await hub.delivery.rules.history()]


async def replace(hub: HubRuntime, body: dict[str, Any]) -> RulesPublic:
    """A new version of the rule set from the API: 409 while a rules file is configured;
    ``RoutingError`` for rules that do not parse or name an unknown destination."""
    delivery = hub.delivery
    if delivery.rules_file_managed:
        raise Refused(
            "rules_managed_by_file",
            "RELAYPACS_HUB_RULES_FILE is set: edit the file and POST /api/v1/rules/reload",
        )
    rules = parse_rule_set(body)
    rules.check_destinations(delivery.destinations)
    stored, changed = await delivery.rules.save(rules, "api")
    await audit(
        hub.sessionmaker,
        "admin",
        "admin.rules_put",
        "routing_rules",
        version=stored.version,
        changed=changed,
    )
    return _public(stored, "api")


async def reload(hub: HubRuntime) -> RulesPublic:
    """Read the rules file again (a new version when it changed); ``RoutingError`` for a bad
    file, after auditing the failure."""
    delivery = hub.delivery
    if not delivery.rules_file_managed:
        raise Refused("no_rules_file", "RELAYPACS_HUB_RULES_FILE is not set")
    try:
        await delivery.import_rules_file()
    except RoutingError:
        await audit(
            hub.sessionmaker,
            "admin",
            "admin.rules_reload",
            "routing_rules",
            outcome="minor_failure",
        )
        raise
    stored = await delivery.rules.current()
    await audit(
        hub.sessionmaker,
        "admin",
        "admin.rules_reload",
        "routing_rules",
        version=stored.version if stored else None,
    )
    return _public(stored, "file")


# -- dry run -------------------------------------------------------------------------------------


class FactsIn(BaseModel):
    facility: str | None = None
    service_level: Literal["stat", "routine"] = "routine"
    modalities: list[str] = Field(default_factory=list)
    attributes: dict[str, list[str]] = Field(
        default_factory=dict, description="keyword or GGGG,EEEE -> values"
    )


class DryRunRequest(BaseModel):
    study_instance_uid: str | None = Field(
        default=None, description="A study the hub holds: its own facts are used"
    )
    facts: FactsIn | None = Field(default=None, description="Or facts given here")
    facility: str | None = Field(default=None, description="Override the study's facility")
    rules: dict[str, Any] | None = Field(
        default=None, description="Proposed rules to try instead of those in force"
    )
    now: datetime | None = Field(default=None, description="Evaluate as if at this time")


class RouteOut(BaseModel):
    destination: str
    priority: int
    held: bool
    held_by: str | None
    rules: list[str]


class RuleOutcomeOut(BaseModel):
    rule: str
    matched: bool
    skipped: bool
    failed: list[str]


class DryRunResponse(BaseModel):
    rule_set_version: int | None
    destinations: list[RouteOut]
    rules: list[RuleOutcomeOut]
    defaulted: bool
    unrouted: bool
    facts: dict[str, Any]


def _facts_out(facts: StudyFacts) -> dict[str, Any]:
    from pydicom.datadict import keyword_for_tag

    return {
        "study_instance_uid": facts.study_instance_uid,
        "facility": facts.facility,
        "service_level": facts.service_level,
        "modalities": sorted(facts.modalities),
        "attributes": {
            (keyword_for_tag(tag) or f"{tag >> 16:04X},{tag & 0xFFFF:04X}"): list(values)
            for tag, values in sorted(facts.attributes.items())
        },
    }


def _response(decision: Decision, facts: StudyFacts, version: int | None) -> DryRunResponse:
    return DryRunResponse(
        rule_set_version=version,
        destinations=[
            RouteOut(
                destination=r.destination,
                priority=r.priority,
                held=r.held,
                held_by=r.held_by,
                rules=list(r.rules),
            )
            for r in decision.routes
        ],
        rules=[
            RuleOutcomeOut(rule=o.rule, matched=o.matched, skipped=o.skipped, failed=list(o.failed))
            for o in decision.outcomes
        ],
        defaulted=decision.defaulted,
        unrouted=not decision.routes,
        facts=_facts_out(facts),
    )


async def dry_run_study(
    hub: HubRuntime,
    study_uid: str,
    *,
    facility: str | None,
    now: datetime,
    proposed: RuleSet | None,
) -> DryRunResponse:
    """Where a study the hub holds would go (its facts; ``facility`` overrides its own)."""
    async with hub.sessionmaker() as session:
        study = await session.get(Study, study_uid)
        if study is None:
            raise unknown_study()
        route = await session.get(StudyRoute, study_uid)
    routing = await hub.delivery.router.decide(
        study_uid,
        service_level=study.service_level,
        facility=facility or (route.facility if route else None),
        now=now,
        rule_set=proposed,
    )
    return _response(routing.decision, routing.facts, routing.rule_set_version)


async def dry_run_facts(
    hub: HubRuntime, facts: StudyFacts, *, now: datetime, proposed: RuleSet | None
) -> DryRunResponse:
    """Where a study with these facts would go, by ``proposed`` or else the rules in force."""
    version: int | None = None
    rules = proposed
    if rules is None:
        stored = await hub.delivery.rules.current()
        if stored is None:
            raise Refused("no_rules", "no rules are configured: every study goes everywhere")
        rules, version = stored.rules, stored.version
    return _response(evaluate(rules, facts, now), facts, version)


class UnroutedStudy(BaseModel):
    study_instance_uid: str
    facility: str | None
    rule_set_version: int | None
    routed_at: datetime
    matched_rules: list[str]


async def unrouted(hub: HubRuntime) -> list[UnroutedStudy]:
    """Committed studies the rules sent nowhere at their last commit."""
    async with hub.sessionmaker() as session:
        rows = await session.scalars(
            select(StudyRoute)
            .where(StudyRoute.unrouted.is_(True))
            .order_by(StudyRoute.routed_at.desc())
            .limit(500)
        )
        return [
            UnroutedStudy(
                study_instance_uid=r.study_instance_uid,
                facility=r.facility,
                rule_set_version=r.rule_set_version,
                routed_at=r.routed_at,
                matched_rules=json.loads(r.matched_rules_json),
            )
            for r in rows
        ]
