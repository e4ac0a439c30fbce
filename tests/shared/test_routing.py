"""Routing rules: parsing, validation and evaluation (pure, no I/O)."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import relaypacs_shared.routing as routing
from relaypacs_shared.errors import RoutingError
from relaypacs_shared.routing import (
    PRIORITY_ROUTINE,
    PRIORITY_STAT,
    RuleSet,
    StudyFacts,
    evaluate,
    parse_rule_set,
    parse_tag,
    route_everywhere,
)

STUDY_DESCRIPTION = 0x00081030
INSTITUTION = 0x00080080
REFERRING = 0x00080090
BODY_PART = 0x00180015
ACCESSION = 0x00080050

# A Wednesday, 10:00 UTC.
WEDNESDAY_10 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


def rules(text: str) -> RuleSet:
    return parse_rule_set(tomllib.loads(text))


def facts(
    level: str = "routine",
    facility: str | None = "clinic-north",
    modalities: tuple[str, ...] = ("CT",),
    **attributes: tuple[str, ...],
) -> StudyFacts:
    tags = {parse_tag(k): v for k, v in attributes.items()}
    return StudyFacts(
        study_instance_uid="1.2.3",
        service_level=level,
        facility=facility,
        modalities=frozenset(modalities),
        attributes=tags,
    )


def test_the_documented_example_parses_and_routes() -> None:
    doc = routing.__doc__ or ""
    block = doc.split("A rule set, in TOML::")[1].split("Semantics:")[0]
    text = "\n".join(line[4:] for line in block.splitlines())
    ruleset = rules(text)
    assert [r.name for r in ruleset.rules] == ["stat-to-both", "hold-research"]
    # 2026-03-03 is a Tuesday; 19:00 in Nairobi is inside 18:00-07:00 on "tue".
    now = datetime(2026, 3, 3, 19, 0, tzinfo=ZoneInfo("Africa/Nairobi"))
    study = facts(
        "stat",
        "clinic-south",
        ("MR",),
        StudyDescription=("MR HEAD",),
        InstitutionName=("St Mary",),
        ReferringPhysicianName=("DOE^JANE",),
        BodyPartExamined=("BRAIN",),
        AccessionNumber=("A123",),
    )
    decision = evaluate(ruleset, study, now)
    assert decision.destinations == ("orthanc-a", "orthanc-b")
    assert all(r.priority == PRIORITY_STAT for r in decision.routes)
    # stop = true: the hold rule after it was not evaluated.
    assert [(o.rule, o.matched, o.skipped) for o in decision.outcomes] == [
        ("stat-to-both", True, False),
        ("hold-research", False, True),
    ]


FANOUT = """
default_destinations = ["archive"]

[[rules]]
name = "ct-to-two"
destinations = ["orthanc-a", "orthanc-b"]
[rules.match]
modality = "ct"

[[rules]]
name = "north-to-dimse"
destinations = ["legacy", "orthanc-a"]
priority = 50
[rules.match]
facility = "clinic-north"
"""


def test_fan_out_accumulates_and_the_highest_priority_wins() -> None:
    decision = evaluate(rules(FANOUT), facts(), WEDNESDAY_10)
    assert {r.destination: r.priority for r in decision.routes} == {
        "legacy": 50,
        "orthanc-a": 50,  # named by both rules: max(routine 0, 50)
        "orthanc-b": PRIORITY_ROUTINE,
    }
    assert {r.destination: r.rules for r in decision.routes}["orthanc-a"] == (
        "ct-to-two",
        "north-to-dimse",
    )
    assert not decision.defaulted


def test_stat_study_keeps_stat_priority_without_a_rule_priority() -> None:
    decision = evaluate(rules(FANOUT), facts("stat", facility="elsewhere"), WEDNESDAY_10)
    assert {r.destination: r.priority for r in decision.routes} == {
        "orthanc-a": PRIORITY_STAT,
        "orthanc-b": PRIORITY_STAT,
    }


def test_no_match_falls_back_to_default_destinations_and_says_why() -> None:
    decision = evaluate(rules(FANOUT), facts(facility="south", modalities=("MR",)), WEDNESDAY_10)
    assert decision.destinations == ("archive",)
    assert decision.defaulted
    failed = {o.rule: o.failed for o in decision.outcomes}
    assert failed["ct-to-two"] == ("modalities ['MR'] have none of ['CT']",)
    assert failed["north-to-dimse"] == ("facility 'south' not in ['clinic-north']",)


def test_without_default_a_study_that_matches_nothing_is_unrouted() -> None:
    ruleset = rules('[[rules]]\nname = "mr"\ndestinations = ["a"]\n[rules.match]\nmodality = "MR"')
    decision = evaluate(ruleset, facts(), WEDNESDAY_10)
    assert decision.routes == ()
    assert not decision.defaulted


HOLDS = """
[[rules]]
name = "all"
destinations = ["a", "b"]

[[rules]]
name = "hold-b-for-teaching"
destinations = ["b"]
hold = true
[rules.match]
attributes = [{ tag = "StudyDescription", regex = "(?i)teaching" }]

[[rules]]
name = "hold-everything-from-test"
hold = true
[rules.match]
facility = "test-site"
"""


def test_hold_applies_to_the_routes_it_names() -> None:
    decision = evaluate(rules(HOLDS), facts(StudyDescription=("Teaching file",)), WEDNESDAY_10)
    held = {r.destination: (r.held, r.held_by) for r in decision.routes}
    assert held == {"a": (False, None), "b": (True, "hold-b-for-teaching")}


def test_hold_without_destinations_holds_every_route() -> None:
    decision = evaluate(rules(HOLDS), facts(facility="test-site"), WEDNESDAY_10)
    assert {r.destination: r.held_by for r in decision.routes} == {
        "a": "hold-everything-from-test",
        "b": "hold-everything-from-test",
    }


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ('{ tag = "InstitutionName", equals = "St Mary" }', ("St Mary",), True),
        ('{ tag = "InstitutionName", equals = "St Mary" }', ("st mary",), False),
        ('{ tag = "InstitutionName", in = ["A", "St Mary"] }', ("St Mary",), True),
        ('{ tag = "InstitutionName", in = "A" }', ("St Mary",), False),
        ('{ tag = "InstitutionName", regex = "^St " }', ("St Mary",), True),
        ('{ tag = "InstitutionName", regex = "(?i)MARY$" }', ("St Mary",), True),
        ('{ tag = "InstitutionName", regex = "^Mary" }', ("St Mary",), False),
        ('{ tag = "InstitutionName", exists = true }', ("St Mary",), True),
        ('{ tag = "InstitutionName", exists = true }', (), False),
        ('{ tag = "InstitutionName", exists = false }', (), True),
        ('{ tag = "InstitutionName", exists = true }', ("",), False),
        ('{ tag = "0008,0080", equals = "St Mary" }', ("St Mary",), True),
        ('{ tag = "(0008,0080)", equals = "St Mary" }', ("St Mary",), True),
        ('{ tag = "00080080", equals = "St Mary" }', ("St Mary",), True),
        ('{ tag = "InstitutionName", equals = "X", negate = true }', ("St Mary",), True),
        # Multi-valued: any value satisfies.
        ('{ tag = "InstitutionName", equals = "B" }', ("A", "B"), True),
    ],
)
def test_attribute_operators(condition: str, values: tuple[str, ...], expected: bool) -> None:
    ruleset = rules(
        f'[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\nattributes = [{condition}]'
    )
    study = StudyFacts("1.2.3", attributes={INSTITUTION: values} if values else {})
    decision = evaluate(ruleset, study, WEDNESDAY_10)
    assert bool(decision.routes) is expected


WINDOW = """
timezone = "Europe/Paris"
[[rules]]
name = "night"
destinations = ["night-reader"]
[rules.match]
time = {{ after = "18:00", before = "07:00"{days} }}
"""


@pytest.mark.parametrize(
    ("local", "days", "expected"),
    [
        ("2026-03-04T18:00", "", True),  # after is inclusive
        ("2026-03-04T17:59", "", False),
        ("2026-03-05T06:59", "", True),  # wraps midnight
        ("2026-03-05T07:00", "", False),  # before is exclusive
        # Friday night shift: Friday 23:00 and Saturday 03:00 belong to Friday.
        ("2026-03-06T23:00", ', days = ["fri"]', True),
        ("2026-03-07T03:00", ', days = ["fri"]', True),
        ("2026-03-07T23:00", ', days = ["fri"]', False),
        ("2026-03-06T03:00", ', days = ["fri"]', False),  # Thursday's night
    ],
)
def test_time_windows_in_the_rule_sets_zone(local: str, days: str, expected: bool) -> None:
    ruleset = rules(WINDOW.format(days=days))
    now = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Europe/Paris"))
    # Given in UTC: the rule set's zone decides, not the caller's.
    decision = evaluate(ruleset, facts(), now.astimezone(UTC))
    assert bool(decision.routes) is expected


def test_time_window_until_midnight() -> None:
    ruleset = rules(
        '[[rules]]\nname = "eve"\ndestinations = ["a"]\n[rules.match]\ntime = { after = "20:00" }'
    )
    assert evaluate(ruleset, facts(), datetime(2026, 3, 4, 23, 59, tzinfo=UTC)).routes
    assert not evaluate(ruleset, facts(), datetime(2026, 3, 4, 19, 59, tzinfo=UTC)).routes


def test_disabled_rules_are_skipped() -> None:
    ruleset = rules('[[rules]]\nname = "off"\nenabled = false\ndestinations = ["a"]')
    decision = evaluate(ruleset, facts(), WEDNESDAY_10)
    assert decision.routes == ()
    assert decision.outcomes[0].skipped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\n'
            'attributes = [{ tag = "NoSuchKeyword", equals = "x" }]',
            "neither a DICOM keyword",
        ),
        (
            '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\n'
            'attributes = [{ tag = "Modality", equals = "CT", regex = "C" }]',
            "exactly one of equals, in, regex, exists",
        ),
        (
            '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\n'
            'attributes = [{ tag = "Modality", regex = "(" }]',
            "invalid regular expression",
        ),
        ('[[rules]]\nname = "r"\n', "names no destination"),
        ('[[rules]]\nname = "r"\ndestinations = ["a"]\nfoo = 1\n', "Extra inputs"),
        ('[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\nflavour = "x"', "Extra"),
        ('[[rules]]\nname = "r"\ndestinations = ["a"]\n' * 2, "unique"),
        ('timezone = "Mars/Olympus"\n', "unknown time zone"),
        ('[[rules]]\nname = "has space"\ndestinations = ["a"]', "pattern"),
        (
            '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\n'
            'time = { after = "08:00", before = "08:00" }',
            "empty",
        ),
        (
            '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\nservice_level = "urgent"',
            "service_level",
        ),
    ],
)
def test_invalid_rules_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(RoutingError, match=re.escape(message)):
        rules(text)


def test_unknown_destinations_are_named() -> None:
    with pytest.raises(RoutingError, match=r"unknown destination.*archive, orthanc-b"):
        rules(FANOUT).check_destinations(["orthanc-a", "legacy"])
    rules(FANOUT).check_destinations(["orthanc-a", "orthanc-b", "legacy", "archive"])


def test_rules_say_which_headers_they_need() -> None:
    assert not rules('[[rules]]\nname = "all"\ndestinations = ["a"]').needs_headers()
    assert rules(FANOUT).needs_headers()  # modality
    ruleset = rules(HOLDS)
    assert ruleset.needs_headers()
    assert ruleset.referenced_tags() == {0x00080060, STUDY_DESCRIPTION}


def test_evaluate_needs_an_aware_time() -> None:
    with pytest.raises(RoutingError, match="timezone-aware"):
        evaluate(rules(FANOUT), facts(), datetime(2026, 3, 4, 10, 0))


def test_patterns_are_data_never_code() -> None:
    ruleset = rules(
        '[[rules]]\nname = "r"\ndestinations = ["a"]\n[rules.match]\n'
        'attributes = [{ tag = "StudyDescription", regex = "__import__(\'os\')" }]'
    )
    assert not evaluate(ruleset, facts(StudyDescription=("HEAD",)), WEDNESDAY_10).routes
    hit = facts(StudyDescription=("__import__'os'",))
    assert evaluate(ruleset, hit, WEDNESDAY_10).routes


def test_without_rules_every_destination_at_the_study_level() -> None:
    decision = route_everywhere(["b", "a"], "stat")
    assert [(r.destination, r.priority) for r in decision.routes] == [
        ("a", PRIORITY_STAT),
        ("b", PRIORITY_STAT),
    ]


def test_rule_sets_round_trip_through_json() -> None:
    for text in (FANOUT, HOLDS, WINDOW.format(days=', days = ["sat", "sun"]')):
        ruleset = rules(text)
        again = parse_rule_set(ruleset.model_dump(mode="json", by_alias=True, exclude_none=True))
        assert again == ruleset


_values = st.lists(st.text(max_size=8), max_size=3).map(tuple)


@settings(max_examples=200, deadline=None)
@given(
    level=st.sampled_from(["stat", "routine"]),
    facility=st.one_of(st.none(), st.sampled_from(["clinic-north", "south", "test-site"])),
    modalities=st.sets(st.sampled_from(["CT", "MR", "CR", "SR"]), max_size=3),
    description=_values,
    hour=st.integers(0, 23),
)
def test_any_study_gets_a_consistent_decision(
    level: str, facility: str | None, modalities: set[str], description: tuple[str, ...], hour: int
) -> None:
    for ruleset in (rules(FANOUT), rules(HOLDS)):
        study = StudyFacts(
            "1.2.3",
            service_level=level,
            facility=facility,
            modalities=frozenset(modalities),
            attributes={STUDY_DESCRIPTION: description},
        )
        decision = evaluate(ruleset, study, WEDNESDAY_10.replace(hour=hour))
        assert set(decision.destinations) <= ruleset.destinations()
        assert len(decision.outcomes) == len(ruleset.rules)
        assert list(decision.destinations) == sorted(set(decision.destinations))
        for route in decision.routes:
            assert route.held == (route.held_by is not None)
            assert route.priority in (PRIORITY_STAT, PRIORITY_ROUTINE, 50)
        if decision.defaulted:
            assert not any(o.matched and ruleset.rules[i].destinations
                           for i, o in enumerate(decision.outcomes))  # fmt: skip
