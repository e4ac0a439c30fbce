"""Admin API: routing rules. Read, replace (or reload from the file), history, dry run.

``POST /api/v1/rules/dry-run`` shows which rules a study matches and where it would go, for a
study the hub holds (by its UID) or for facts given in the request, with the rules in force or
with rules proposed in the request, without changing anything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from relaypacs_hub.api.deps import AdminAuth, DeliveryDep, State
from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import Study, StudyRoute
from relaypacs_hub.forwarding.runtime import Delivery
from relaypacs_hub.routing.rules import StoredRuleSet
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError, RoutingError
from relaypacs_shared.routing import (
    Decision,
    RuleSet,
    StudyFacts,
    evaluate,
    parse_rule_set,
    parse_tag,
)

router = APIRouter(prefix="/api/v1/rules", tags=["admin: rules"])


def _problem(code: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=code, detail={"code": kind, "detail": detail})


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


def _managed_by(delivery: Delivery) -> Literal["file", "api"]:
    return "file" if delivery.rules_file_managed else "api"


@router.get("", response_model=RulesPublic)
async def get_rules(delivery: DeliveryDep, _auth: AdminAuth) -> RulesPublic:
    """The rule set in force, its version and where it came from."""
    return _public(await delivery.rules.current(), _managed_by(delivery))


@router.put("", response_model=RulesPublic)
async def put_rules(
    delivery: DeliveryDep, _auth: AdminAuth, body: Annotated[dict[str, Any], Body()]
) -> RulesPublic:
    """Replace the rule set (a new version). Refused while a rules file is configured."""
    if delivery.rules_file_managed:
        raise _problem(
            409,
            "rules_managed_by_file",
            "RELAYPACS_HUB_RULES_FILE is set: edit the file and POST /api/v1/rules/reload",
        )
    rules = _parse(body)
    try:
        rules.check_destinations(delivery.destinations)
    except RoutingError as exc:
        raise _problem(422, "invalid_rules", str(exc)) from exc
    stored, _changed = await delivery.rules.save(rules, "api")
    await audit(
        delivery.sessionmaker,
        "admin",
        "admin.rules_put",
        "routing_rules",
        version=stored.version,
        changed=_changed,
    )
    return _public(stored, "api")


@router.post("/reload", response_model=RulesPublic)
async def reload_rules(delivery: DeliveryDep, _auth: AdminAuth) -> RulesPublic:
    """Read the rules file again; a new version when it changed."""
    if not delivery.rules_file_managed:
        raise _problem(409, "no_rules_file", "RELAYPACS_HUB_RULES_FILE is not set")
    try:
        await delivery.import_rules_file()
    except RoutingError as exc:
        await audit(
            delivery.sessionmaker,
            "admin",
            "admin.rules_reload",
            "routing_rules",
            outcome="minor_failure",
        )
        raise _problem(422, "invalid_rules", str(exc)) from exc
    current = await delivery.rules.current()
    await audit(
        delivery.sessionmaker,
        "admin",
        "admin.rules_reload",
        "routing_rules",
        version=current.version if current else None,
    )
    return _public(current, "file")


@router.get("/history", response_model=list[RulesPublic])
async def rules_history(delivery: DeliveryDep, _auth: AdminAuth) -> list[RulesPublic]:
    return [_public(s, _managed_by(delivery)) for s in await delivery.rules.history()]


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


def _parse(body: dict[str, Any]) -> RuleSet:
    try:
        return parse_rule_set(body)
    except RoutingError as exc:
        raise _problem(422, "invalid_rules", str(exc)) from exc


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


@router.post("/dry-run", response_model=DryRunResponse)
async def dry_run(
    request: DryRunRequest, state: State, delivery: DeliveryDep, _auth: AdminAuth
) -> DryRunResponse:
    """Which rules a study matches and where it would go; nothing is changed."""
    proposed = _parse(request.rules) if request.rules is not None else None
    now = request.now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if request.study_instance_uid is not None:
        try:
            uid = check_uid(request.study_instance_uid, "StudyInstanceUID")
        except DicomValidationError as exc:
            raise _problem(422, "malformed_uid", exc.message) from exc
        async with state.sessionmaker() as session:
            study = await session.get(Study, uid)
            if study is None:
                raise _problem(404, "unknown_study", "the hub holds no instance of this study")
            route = await session.get(StudyRoute, uid)
        facility = request.facility or (route.facility if route else None)
        routing = await delivery.router.decide(
            uid, service_level=study.service_level, facility=facility, now=now, rule_set=proposed
        )
        return _response(routing.decision, routing.facts, routing.rule_set_version)
    if request.facts is None:
        raise _problem(422, "no_study", "give study_instance_uid or facts")
    try:
        attributes = {parse_tag(k): tuple(v) for k, v in request.facts.attributes.items()}
    except ValueError as exc:
        raise _problem(422, "unknown_attribute", str(exc)) from exc
    facts = StudyFacts(
        study_instance_uid="(given facts)",
        service_level=request.facts.service_level,
        facility=request.facility or request.facts.facility,
        modalities=frozenset(m.upper() for m in request.facts.modalities),
        attributes=attributes,
    )
    version: int | None = None
    rules = proposed
    if rules is None:
        stored = await delivery.rules.current()
        if stored is None:
            raise _problem(409, "no_rules", "no rules are configured: every study goes everywhere")
        rules, version = stored.rules, stored.version
    return _response(evaluate(rules, facts, now), facts, version)


class UnroutedStudy(BaseModel):
    study_instance_uid: str
    facility: str | None
    rule_set_version: int | None
    routed_at: datetime
    matched_rules: list[str]


@router.get("/unrouted", response_model=list[UnroutedStudy])
async def unrouted(state: State, _auth: AdminAuth) -> list[UnroutedStudy]:
    """Committed studies the rules sent nowhere at their last commit."""
    async with state.sessionmaker() as session:
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
