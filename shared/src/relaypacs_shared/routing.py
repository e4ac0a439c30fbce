"""Routing rules: which destinations a committed study goes to, how urgently, and whether it waits.

Rules are data, never code: a rule set is parsed from TOML (the hub's rules file) or JSON (the
admin API) into the models below and evaluated by :func:`evaluate`. There is no ``eval`` and no
expression language; a condition is one of a fixed set of operators.

A rule set, in TOML::

    timezone = "Africa/Nairobi"            # for time windows (IANA name); default UTC
    default_destinations = ["archive"]     # when no rule matches; default: none (unrouted)

    [[rules]]
    name = "stat-to-both"
    destinations = ["orthanc-a", "orthanc-b"]   # fan-out: one job per destination
    priority = "stat"                            # "stat", "routine" or a number (higher first)
    stop = true                                  # later rules are not evaluated if this matches
    [rules.match]
    service_level = "stat"
    facility = ["clinic-north", "clinic-south"]  # a string or a list (any of)
    modality = ["CT", "MR"]                      # the study has a series of any of these
    time = { after = "18:00", before = "07:00", days = ["mon", "tue"] }   # may wrap midnight
    attributes = [
        { tag = "StudyDescription", regex = "(?i)head" },     # re.search on each value
        { tag = "InstitutionName", equals = "St Mary" },
        { tag = "0008,0090", exists = true },                 # keyword or group,element
        { tag = "BodyPartExamined", in = ["HEAD", "BRAIN"] },
        { tag = "AccessionNumber", regex = "^TEST", negate = true },
    ]

    [[rules]]
    name = "hold-research"
    hold = true          # jobs are created held: an admin releases them (no destinations: all)
    [rules.match]
    attributes = [{ tag = "StudyDescription", regex = "(?i)research" }]

Semantics:

- Inside one rule every condition must hold (AND); a list inside a condition is any-of (OR);
  several rules give alternatives. A rule with an empty ``match`` matches every study.
- A study's attribute values are gathered from one instance of each series; a condition on an
  attribute holds when any of its values satisfies it (``negate`` inverts the whole condition).
  ``equals`` and ``in`` compare exact strings (trailing spaces ignored); ``regex`` uses
  :func:`re.search`, so anchor with ``^``/``$`` and use ``(?i)`` for case-insensitive.
- Rules are evaluated in order; every matching rule adds its destinations until one with
  ``stop = true`` matches.
- A destination's priority is the highest priority of the matching rules that name it, where a
  rule without ``priority`` uses the study's service level (STAT 100, routine 0).
- A matching rule with ``hold = true`` holds the routes it names, or all routes when it names none.
- When no rule adds a destination, ``default_destinations`` apply (and the outcome says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from relaypacs_shared.errors import RoutingError

__all__ = [
    "PRIORITY_ROUTINE",
    "PRIORITY_STAT",
    "AttributeCondition",
    "Decision",
    "Match",
    "Route",
    "Rule",
    "RuleOutcome",
    "RuleSet",
    "StudyFacts",
    "TimeWindow",
    "evaluate",
    "parse_rule_set",
    "parse_tag",
    "route_everywhere",
    "service_level_priority",
]

PRIORITY_STAT = 100
PRIORITY_ROUTINE = 0
_PRIORITIES = {"stat": PRIORITY_STAT, "routine": PRIORITY_ROUTINE}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_PATTERN = 500
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


def service_level_priority(service_level: str) -> int:
    """The queue priority of a service level: STAT 100, anything else 0."""
    return _PRIORITIES.get(service_level, PRIORITY_ROUTINE)


def parse_tag(text: str) -> int:
    """A DICOM keyword (``StudyDescription``) or ``GGGG,EEEE`` / ``GGGGEEEE`` as a tag number."""
    text = text.strip()
    m = _TAG_RE.match(text)
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"{text!r} is neither a DICOM keyword nor a tag like 0008,1030")
    return int(tag)


def _listify(value: Any) -> Any:
    if isinstance(value, str | int):
        return [value]
    return value


StrList = Annotated[list[str], BeforeValidator(_listify)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AttributeCondition(_Model):
    """One test on a DICOM attribute: exactly one of ``equals``, ``in``, ``regex``, ``exists``."""

    tag: str
    equals: str | None = None
    in_: StrList | None = Field(default=None, alias="in")
    regex: str | None = Field(default=None, max_length=_MAX_PATTERN)
    exists: bool | None = None
    negate: bool = False

    @field_validator("tag")
    @classmethod
    def _known_tag(cls, value: str) -> str:
        parse_tag(value)
        return value.strip()

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> AttributeCondition:
        given = [
            name
            for name, value in (
                ("equals", self.equals),
                ("in", self.in_),
                ("regex", self.regex),
                ("exists", self.exists),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"condition on {self.tag} needs exactly one of equals, in, regex, exists"
                f" (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def tag_number(self) -> int:
        return parse_tag(self.tag)

    def describe(self) -> str:
        name = keyword_for_tag(self.tag_number) or self.tag
        if self.equals is not None:
            text = f"{name} equals {self.equals!r}"
        elif self.in_ is not None:
            text = f"{name} in {self.in_!r}"
        elif self.regex is not None:
            text = f"{name} matches /{self.regex}/"
        else:
            text = f"{name} {'exists' if self.exists else 'is absent'}"
        return f"not ({text})" if self.negate else text

    def holds(self, values: Sequence[str] | None) -> bool:
        present = [v for v in (values or ()) if v != ""]
        if self.exists is not None:
            result = bool(present) == self.exists
        elif self.equals is not None:
            result = any(v == self.equals for v in present)
        elif self.in_ is not None:
            wanted = set(self.in_)
            result = any(v in wanted for v in present)
        else:
            pattern = re.compile(self.regex or "")
            result = any(pattern.search(v) for v in present)
        return result != self.negate


class TimeWindow(_Model):
    """Local time of day (and optionally weekdays) when a rule applies; may wrap midnight.

    ``after`` is inclusive, ``before`` exclusive (absent: until midnight). A window that wraps
    midnight (``after = "18:00"``, ``before = "07:00"``) belongs to the day it started on, so
    ``days = ["fri"]`` covers Friday 18:00 to Saturday 07:00.
    """

    after: time = time(0, 0)
    before: time | None = None
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.before is not None and self.before == self.after:
            raise ValueError("time window is empty: 'after' equals 'before'")
        return self

    def holds(self, local: datetime) -> bool:
        now = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self.before is None:
            inside = now >= self.after
        elif self.after < self.before:
            inside = self.after <= now < self.before
        else:
            inside = now >= self.after or now < self.before
            if now < self.before:
                day = (day - 1) % 7
        if not inside:
            return False
        return self.days is None or _WEEKDAYS[day] in self.days

    def describe(self) -> str:
        end = self.before.strftime("%H:%M") if self.before else "24:00"
        text = f"time {self.after.strftime('%H:%M')}-{end}"
        if self.days:
            text += f" on {','.join(self.days)}"
        return text


class Match(_Model):
    facility: StrList | None = None
    service_level: list[Literal["stat", "routine"]] | None = None
    modality: StrList | None = None
    time: TimeWindow | None = None
    attributes: list[AttributeCondition] = Field(default_factory=list)

    @field_validator("service_level", mode="before")
    @classmethod
    def _level_list(cls, value: Any) -> Any:
        return _listify(value)

    @field_validator("modality")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [v.strip().upper() for v in value]


class Rule(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    enabled: bool = True
    match: Match = Field(default_factory=Match)
    destinations: StrList = Field(default_factory=list)
    priority: Literal["stat", "routine"] | int | None = None
    hold: bool = False
    stop: bool = False

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if not self.destinations and not self.hold and not self.stop:
            raise ValueError(f"rule {self.name!r} names no destination and neither holds nor stops")
        return self

    def priority_for(self, service_level: str) -> int:
        if self.priority is None:
            return service_level_priority(service_level)
        if isinstance(self.priority, str):
            return _PRIORITIES[self.priority]
        return self.priority


class RuleSet(_Model):
    timezone: str = "UTC"
    default_destinations: StrList = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        return self

    def destinations(self) -> set[str]:
        """Every destination name the rule set mentions."""
        out = set(self.default_destinations)
        for rule in self.rules:
            out.update(rule.destinations)
        return out

    def check_destinations(self, known: Iterable[str]) -> None:
        """Raise ``RoutingError`` when a rule names a destination that is not configured."""
        unknown = sorted(self.destinations() - set(known))
        if unknown:
            raise RoutingError(f"rules name unknown destination(s): {', '.join(unknown)}")

    def referenced_tags(self) -> set[int]:
        """Tags the rules test, so the hub reads only what it needs (Modality always)."""
        tags = {0x00080060}
        for rule in self.rules:
            tags.update(c.tag_number for c in rule.match.attributes)
        return tags

    def needs_headers(self) -> bool:
        """Whether evaluating needs DICOM headers (modality or attribute conditions)."""
        return any(r.match.modality or r.match.attributes for r in self.rules if r.enabled)


def parse_rule_set(data: Mapping[str, Any]) -> RuleSet:
    """Validate a rule set from parsed TOML or JSON; ``RoutingError`` says what is wrong."""
    try:
        return RuleSet.model_validate(dict(data))
    except ValueError as exc:
        raise RoutingError(f"invalid routing rules: {exc}") from exc


@dataclass(frozen=True)
class StudyFacts:
    """What rules may look at. ``attributes`` maps tag numbers to the values found in the study."""

    study_instance_uid: str
    service_level: str = "routine"
    facility: str | None = None
    modalities: frozenset[str] = frozenset()
    attributes: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    def values(self, tag: int) -> tuple[str, ...]:
        if tag == 0x00080060 and tag not in self.attributes:
            return tuple(sorted(self.modalities))
        return self.attributes.get(tag, ())


@dataclass(frozen=True)
class RuleOutcome:
    """One rule's verdict, with the conditions that failed (for the dry run)."""

    rule: str
    matched: bool
    failed: tuple[str, ...] = ()
    skipped: bool = False  # disabled, or after a matching ``stop`` rule


@dataclass(frozen=True)
class Route:
    destination: str
    priority: int
    held: bool = False
    rules: tuple[str, ...] = ()
    held_by: str | None = None  # the first matching rule that holds this route


@dataclass(frozen=True)
class Decision:
    routes: tuple[Route, ...]
    outcomes: tuple[RuleOutcome, ...]
    defaulted: bool = False

    @property
    def matched_rules(self) -> tuple[str, ...]:
        return tuple(o.rule for o in self.outcomes if o.matched)

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(r.destination for r in self.routes)


def _failed_conditions(match: Match, facts: StudyFacts, local_now: datetime) -> list[str]:
    failed: list[str] = []
    if match.facility is not None and facts.facility not in match.facility:
        failed.append(f"facility {facts.facility!r} not in {match.facility!r}")
    if match.service_level is not None and facts.service_level not in match.service_level:
        failed.append(f"service level {facts.service_level!r} not in {match.service_level!r}")
    if match.modality is not None:
        have = {m.upper() for m in facts.modalities}
        if not have & set(match.modality):
            failed.append(f"modalities {sorted(have)!r} have none of {match.modality!r}")
    if match.time is not None and not match.time.holds(local_now):
        failed.append(f"{match.time.describe()} (now {local_now.strftime('%a %H:%M')})")
    for cond in match.attributes:
        if not cond.holds(facts.values(cond.tag_number)):
            failed.append(cond.describe())
    return failed


def evaluate(rules: RuleSet, facts: StudyFacts, now: datetime) -> Decision:
    """Decide the routes of a study. ``now`` must be timezone-aware (any zone)."""
    if now.tzinfo is None:
        raise RoutingError("evaluate() needs a timezone-aware time")
    local_now = now.astimezone(ZoneInfo(rules.timezone))
    outcomes: list[RuleOutcome] = []
    priority: dict[str, int] = {}
    by_rule: dict[str, list[str]] = {}
    held: dict[str, str] = {}
    hold_all: str | None = None
    stopped = False
    for rule in rules.rules:
        if stopped or not rule.enabled:
            outcomes.append(RuleOutcome(rule.name, matched=False, skipped=True))
            continue
        failed = _failed_conditions(rule.match, facts, local_now)
        outcomes.append(RuleOutcome(rule.name, matched=not failed, failed=tuple(failed)))
        if failed:
            continue
        level = rule.priority_for(facts.service_level)
        for dest in rule.destinations:
            priority[dest] = max(priority.get(dest, level), level)
            by_rule.setdefault(dest, []).append(rule.name)
        if rule.hold:
            if rule.destinations:
                for dest in rule.destinations:
                    held.setdefault(dest, rule.name)
            elif hold_all is None:
                hold_all = rule.name
        stopped = rule.stop
    defaulted = False
    if not priority and rules.default_destinations:
        defaulted = True
        level = service_level_priority(facts.service_level)
        for dest in rules.default_destinations:
            priority[dest] = level
            by_rule.setdefault(dest, [])
    routes = tuple(
        Route(
            destination=dest,
            priority=priority[dest],
            held=hold_all is not None or dest in held,
            rules=tuple(by_rule.get(dest, ())),
            held_by=held.get(dest, hold_all),
        )
        for dest in sorted(priority)
    )
    return Decision(routes=routes, outcomes=tuple(outcomes), defaulted=defaulted)


def route_everywhere(destinations: Iterable[str], service_level: str) -> Decision:
    """The decision without a rule set: every configured destination, at the study's level."""
    level = service_level_priority(service_level)
    return Decision(
        routes=tuple(Route(d, level) for d in sorted(destinations)), outcomes=(), defaulted=True
    )
