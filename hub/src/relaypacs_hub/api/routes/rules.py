"""Admin API: routing rules. Read, replace (or reload from the file), history, dry run.

``POST /api/v1/rules/dry-run`` shows which rules a study matches and where it would go, for a
study the hub holds (by its UID) or for facts given in the request, with the rules in force or
with rules proposed in the request, without changing anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.services import rules
from relaypacs_hub.services.rules import (
    DryRunRequest,
    DryRunResponse,
    RulesPublic,
    UnroutedStudy,
)
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError, RoutingError
from relaypacs_shared.routing import RuleSet, StudyFacts, parse_rule_set, parse_tag

router = APIRouter(prefix="/api/v1/rules", tags=["admin: rules"])


def _problem(code: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=code, detail={"code": kind, "detail": detail})


def _invalid(exc: RoutingError) -> HTTPException:
    return _problem(422, "invalid_rules", str(exc))


@router.get("", response_model=RulesPublic)
async def get_rules(state: State, _auth: AdminAuth) -> RulesPublic:
    """The rule set in force, its version and where it came from."""
    return await rules.current(state)


@router.put("", response_model=RulesPublic)
async def put_rules(
    state: State, _auth: AdminAuth, body: Annotated[dict[str, Any], Body()]
) -> RulesPublic:
    """Replace the rule set (a new version). Refused while a rules file is configured."""
    try:
        return await rules.replace(state, body)
    except RoutingError as exc:
        raise _invalid(exc) from exc


@router.post("/reload", response_model=RulesPublic)
async def reload_rules(state: State, _auth: AdminAuth) -> RulesPublic:
    """Read the rules file again; a new version when it changed."""
    try:
        return await rules.reload(state)
    except RoutingError as exc:
        raise _invalid(exc) from exc


@router.get("/history", response_model=list[RulesPublic])
async def rules_history(state: State, _auth: AdminAuth) -> list[RulesPublic]:
    return await rules.history(state)


def _parse(body: dict[str, Any]) -> RuleSet:
    try:
        return parse_rule_set(body)
    except RoutingError as exc:
        raise _invalid(exc) from exc


@router.post("/dry-run", response_model=DryRunResponse)
async def dry_run(request: DryRunRequest, state: State, _auth: AdminAuth) -> DryRunResponse:
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
        return await rules.dry_run_study(
            state, uid, facility=request.facility, now=now, proposed=proposed
        )
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
    return await rules.dry_run_facts(state, facts, now=now, proposed=proposed)


@router.get("/unrouted", response_model=list[UnroutedStudy])
async def unrouted(state: State, _auth: AdminAuth) -> list[UnroutedStudy]:
    """Committed studies the rules sent nowhere at their last commit."""
    return await rules.unrouted(state)
