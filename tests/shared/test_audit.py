"""The audit chain catches an edited, inserted, deleted or reordered record and a cut tail."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaypacs_shared.audit import (
    GENESIS,
    Anchor,
    AuditRecord,
    ChainedRecord,
    chain,
    head,
    record_hash,
    to_atna,
    verify_chain,
)


def make_log(n: int) -> list[ChainedRecord]:
    out: list[ChainedRecord] = []
    for i in range(1, n + 1):
        rec = AuditRecord(
            seq=i,
            at=f"2026-11-28T03:00:{i % 60:02d}.000000Z",
            actor="agent:clinic-a",
            action="instance.received",
            target=f"1.2.826.0.1.3680043.8.498.{i}",
            source="10.0.0.7",
            details={"size": 1000 + i, "study_uid": "1.2.3"},
        )
        out.append(chain(out[-1] if out else None, rec))
    return out


def kinds(records: list[ChainedRecord], anchor: Anchor | None = None) -> set[tuple[int, str]]:
    return {(p.seq, p.kind) for p in verify_chain(records, anchor)}


def edit(entry: ChainedRecord, **changes: object) -> ChainedRecord:
    return dataclasses.replace(entry, record=dataclasses.replace(entry.record, **changes))


def test_intact_chain_has_no_problems_and_hashes_link() -> None:
    log = make_log(5)
    assert verify_chain(log) == []
    assert log[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(log))
    assert verify_chain(log, head(log)) == []


def test_hash_covers_every_field_and_the_previous_hash() -> None:
    rec = make_log(1)[0].record
    base = record_hash(GENESIS, rec)
    assert record_hash("1" * 64, rec) != base
    for change in (
        {"at": "2026-11-28T03:00:02.000000Z"},
        {"actor": "someone-else"},
        {"action": "study.committed"},
        {"target": "1.2.3.4"},
        {"outcome": "serious_failure"},
        {"source": "10.0.0.8"},
        {"details": {"size": 1}},
    ):
        assert record_hash(GENESIS, dataclasses.replace(rec, **change)) != base, change


def test_edited_record_is_named() -> None:
    log = make_log(5)
    log[2] = edit(log[2], details={"size": 1, "study_uid": "1.2.3"})
    assert kinds(log) == {(3, "edited")}


def test_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    log = make_log(5)
    forged = edit(log[2], actor="intruder")
    log[2] = ChainedRecord(
        forged.record, forged.prev_hash, record_hash(forged.prev_hash, forged.record)
    )
    assert kinds(log) == {(4, "broken_link")}


def test_deleted_record_leaves_a_gap() -> None:
    log = make_log(5)
    del log[2]
    assert kinds(log) == {(4, "missing"), (4, "broken_link")}
    problems = verify_chain(log)
    assert "3 deleted" in str(problems[0])


def test_inserted_record_is_caught() -> None:
    log = make_log(5)
    fake = AuditRecord(seq=3, at=log[2].record.at, actor="x", action="y", target="z")
    log.insert(3, ChainedRecord(fake, log[2].hash, record_hash(log[2].hash, fake)))
    found = kinds(log)
    assert (3, "out_of_order") in found
    assert (4, "broken_link") in found


def test_reordered_records_are_caught() -> None:
    log = make_log(5)
    log[1], log[2] = log[2], log[1]
    assert (2, "out_of_order") in kinds(log)


def test_truncated_tail_is_caught_only_with_an_anchor() -> None:
    log = make_log(6)
    anchor = head(log)
    assert anchor is not None
    cut = log[:4]
    assert verify_chain(cut) == []  # the chain alone cannot know
    assert kinds(cut, anchor) == {(6, "truncated")}
    rewritten = make_log(6)
    rewritten[5] = edit(rewritten[5], target="other")
    rewritten[5] = ChainedRecord(
        rewritten[5].record,
        rewritten[5].prev_hash,
        record_hash(rewritten[5].prev_hash, rewritten[5].record),
    )
    assert kinds(rewritten, anchor) == {(6, "anchor_mismatch")}
    assert Anchor.parse(str(anchor)) == anchor
    with pytest.raises(ValueError):
        Anchor.parse("12:short")


@given(
    n=st.integers(min_value=2, max_value=25),
    data=st.data(),
)
def test_any_single_tamper_is_detected(n: int, data: st.DataObject) -> None:
    log = make_log(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    how = data.draw(st.sampled_from(["edit", "delete", "insert", "swap"]))
    anchor = head(log)
    if how == "edit":
        log[i] = edit(log[i], target=log[i].record.target + ".9")
    elif how == "delete":
        del log[i]
    elif how == "insert":
        prev = log[i - 1] if i > 0 else None
        fake = AuditRecord(
            seq=i + 1, at="2026-01-01T00:00:00.000000Z", actor="x", action="y", target="z"
        )
        log.insert(i, chain(prev, fake))
    else:
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
        log[i], log[j] = log[j], log[i]
    assert verify_chain(log, anchor) != []


def test_records_refuse_patient_identity_and_unknown_outcomes() -> None:
    with pytest.raises(ValueError, match="patient"):
        AuditRecord(seq=1, at="t", actor="a", action="b", target="c", details={"PatientName": "X"})
    with pytest.raises(ValueError, match="outcome"):
        AuditRecord(seq=1, at="t", actor="a", action="b", target="c", outcome="ok")


def test_atna_fields() -> None:
    entry = make_log(1)[0]
    msg = to_atna(entry, "hub-1")
    assert msg["EventIdentification"]["EventID"]["csd-code"] == "110104"
    assert msg["EventIdentification"]["EventOutcomeIndicator"] == 0
    assert msg["ActiveParticipant"][0]["UserID"] == "agent:clinic-a"
    assert msg["ActiveParticipant"][0]["NetworkAccessPointID"] == "10.0.0.7"
    assert msg["AuditSourceIdentification"]["AuditSourceID"] == "hub-1"
    assert msg["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == entry.record.target
