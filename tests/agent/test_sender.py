"""The uplink against a fake hub in one process (httpx.MockTransport), faults injected."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient
from relaypacs_agent.uplink.sender import Sender
from relaypacs_dev.generate import GeneratedStudy

Drop = Callable[..., Path]
_PUT = re.compile(r"^/api/v1/studies/([0-9.]+)/instances/([0-9.]+)$")
_COMMIT = re.compile(r"^/api/v1/studies/([0-9.]+)/commit$")
_STATUS = re.compile(r"^/api/v1/studies/([0-9.]+)$")
Fault = httpx.Response | Exception


@dataclass
class Put:
    sop: str
    digest: str
    length: str
    body: bytes


@dataclass
class FakeHub:
    """Just enough of the hub: stores bodies whose digest matches, checks commits against them."""

    stored: dict[str, bytes] = field(default_factory=dict)
    puts: list[Put] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)  # type: ignore[type-arg]
    put_faults: list[Fault] = field(default_factory=list)  # answered first, in order
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)  # sop -> (status, code)
    lose: set[str] = field(default_factory=set)  # accepted, then lost before the commit

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "PUT" and (m := _PUT.match(path)):
            return self._put(request, m.group(2))
        if request.method == "POST" and (m := _COMMIT.match(path)):
            return self._commit(m.group(1), json.loads(request.read()))
        if request.method == "GET" and (m := _STATUS.match(path)):
            return httpx.Response(200, json=self._status(m.group(1), len(self.stored)))
        return httpx.Response(404, json={"code": "not_found", "detail": path})

    def _put(self, request: httpx.Request, sop: str) -> httpx.Response:
        body = request.read()
        self.puts.append(
            Put(sop, request.headers["Content-Digest"], request.headers["Content-Length"], body)
        )
        if self.put_faults:
            fault = self.put_faults.pop(0)
            if isinstance(fault, Exception):
                raise fault
            return fault
        if sop in self.refuse:
            status, code = self.refuse[sop]
            return httpx.Response(status, json={"code": code, "detail": "refused by the test"})
        sha = hashlib.sha256(body).hexdigest()
        expected = "sha-256=:" + base64.b64encode(bytes.fromhex(sha)).decode() + ":"
        if request.headers["Content-Digest"] != expected:
            return httpx.Response(400, json={"code": "checksum_mismatch", "detail": "digest"})
        if sop not in self.lose:
            self.stored[sop] = body
        receipt = {"sop_instance_uid": sop, "sha256": sha, "size": len(body), "status": "stored"}
        return httpx.Response(201, json=receipt)

    def _commit(self, study: str, manifest: dict) -> httpx.Response:  # type: ignore[type-arg]
        self.commits.append(manifest)
        missing = [
            e["sop_instance_uid"]
            for e in manifest["instances"]
            if hashlib.sha256(self.stored.get(e["sop_instance_uid"], b"")).hexdigest()
            != e["sha256"]
        ]
        if missing:
            problem = {"code": "incomplete", "detail": "instances missing", "missing": missing}
            return httpx.Response(409, json=problem)
        return httpx.Response(200, json=self._status(study, len(manifest["instances"])))

    @staticmethod
    def _status(study: str, count: int) -> dict:  # type: ignore[type-arg]
        return {
            "study_instance_uid": study,
            "state": "committed",
            "service_level": "routine",
            "instance_count": count,
            "destinations": [],
        }


@pytest.fixture
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's retry waits, recorded instead of slept."""
    sleeps: list[float] = []
    for method in (HubClient.put_instance, HubClient.commit, HubClient.study_status):
        monkeypatch.setattr(method.retry, "sleep", sleeps.append)  # type: ignore[attr-defined]
    return sleeps


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def sender(
    store: Store, ingestor: Ingestor, hub: FakeHub, retry_sleeps: list[float]
) -> Iterator[Sender]:
    client = HubClient("http://hub.test", transport=httpx.MockTransport(hub))
    yield Sender(store, client, ingestor, quiet_period=0, retry_max=30, status_poll=3600)
    client.close()


@pytest.fixture
def spooled(ingestor: Ingestor, small_study: GeneratedStudy, drop: Drop) -> dict[str, bytes]:
    """The small study ingested: SOP Instance UID -> the bytes the modality sent."""
    for src in small_study.files:
        assert ingestor.ingest(drop(src)).outcome == "accepted"
    return {
        sop: src.read_bytes()
        for sop, src in zip(small_study.sop_instance_uids, small_study.files, strict=True)
    }


def _states(store: Store) -> dict[str, str]:
    return {r["sop_instance_uid"]: r["state"] for r in store.query("SELECT * FROM instances")}


def _study(store: Store, uid: str) -> dict[str, object]:
    return dict(store.query("SELECT * FROM studies WHERE study_instance_uid = ?", (uid,))[0])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_study_is_uploaded_with_digests_and_committed_whole(
    sender: Sender,
    store: Store,
    hub: FakeHub,
    spooled: dict[str, bytes],
    small_study: GeneratedStudy,
) -> None:
    assert sender.run_once() == 1

    assert sorted(p.sop for p in hub.puts) == sorted(spooled)
    for put in hub.puts:
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(put.body).digest()).decode() + ":"
        assert put.digest == digest
        assert put.body == spooled[put.sop]
        assert put.length == str(len(put.body))
    [manifest] = hub.commits
    assert manifest["service_level"] == "routine"
    assert sorted((e["sop_instance_uid"], e["sha256"]) for e in manifest["instances"]) == sorted(
        (sop, _sha(data)) for sop, data in spooled.items()
    )
    assert set(_states(store).values()) == {"uploaded"}
    study = _study(store, small_study.study_instance_uid)
    assert (study["state"], study["last_error"]) == ("committed", None)


def test_a_503_is_retried_and_the_whole_body_sent_again(
    sender: Sender,
    store: Store,
    hub: FakeHub,
    spooled: dict[str, bytes],
    small_study: GeneratedStudy,
    retry_sleeps: list[float],
) -> None:
    hub.put_faults = [httpx.Response(503, text="busy")]

    assert sender.run_once() == 1

    assert len(retry_sleeps) == 1
    assert len(hub.puts) == len(spooled) + 1
    first, retried = hub.puts[0], hub.puts[1]
    assert first.sop == retried.sop
    assert retried.body == spooled[retried.sop]
    assert hub.stored == spooled
    assert _study(store, small_study.study_instance_uid)["state"] == "committed"


def test_an_unreachable_hub_defers_the_study_and_marks_nothing_uploaded(
    sender: Sender,
    store: Store,
    hub: FakeHub,
    spooled: dict[str, bytes],
    small_study: GeneratedStudy,
    retry_sleeps: list[float],
) -> None:
    hub.put_faults = [httpx.ConnectError("connection refused")] * 100
    before = time.time()

    assert sender.run_once() == 0

    assert len(hub.puts) == 4  # one instance, tried 4 times, then the study waits
    assert len(retry_sleeps) == 3
    assert set(_states(store).values()) == {"spooled"}
    study = _study(store, small_study.study_instance_uid)
    assert study["state"] == "receiving"
    assert "unreachable" in str(study["last_error"])
    assert study["attempts"] == 1
    assert float(study["next_attempt_at"]) > before  # type: ignore[arg-type]
    assert store.due_studies(quiet_period=0) == []
    assert hub.commits == []


def test_a_422_quarantines_the_instance_and_commits_the_rest(
    sender: Sender,
    store: Store,
    hub: FakeHub,
    spooled: dict[str, bytes],
    small_study: GeneratedStudy,
) -> None:
    refused = small_study.sop_instance_uids[1]
    hub.refuse[refused] = (422, "uid_mismatch")

    assert sender.run_once() == 1

    states = _states(store)
    assert states.pop(refused) == "refused"
    assert set(states.values()) == {"uploaded"}
    [row] = store.query("SELECT * FROM quarantine")
    assert (row["reason"], row["source"], row["sop_instance_uid"]) == (
        "hub_uid_mismatch",
        "hub",
        refused,
    )
    kept = Path(row["path"])
    assert kept.read_bytes() == spooled[refused]
    sidecar = json.loads(kept.with_name(kept.name + ".reason.json").read_text(encoding="utf-8"))
    assert sidecar["reason"] == "hub_uid_mismatch"
    [manifest] = hub.commits
    assert sorted(e["sop_instance_uid"] for e in manifest["instances"]) == sorted(states)


def test_an_incomplete_commit_sends_the_missing_instances_again(
    sender: Sender,
    store: Store,
    hub: FakeHub,
    spooled: dict[str, bytes],
    small_study: GeneratedStudy,
) -> None:
    uid = small_study.study_instance_uid
    lost = small_study.sop_instance_uids[2]
    hub.lose = {lost}

    assert sender.run_once() == 0

    states = _states(store)
    assert states.pop(lost) == "spooled"
    assert set(states.values()) == {"uploaded"}
    study = _study(store, uid)
    assert study["state"] == "receiving"
    assert "incomplete" in str(study["last_error"])

    hub.lose = set()
    hub.puts.clear()
    assert sender.send_study(uid, "routine", study["last_instance_at"])  # type: ignore[arg-type]
    assert [p.sop for p in hub.puts] == [lost]
    assert hub.stored == spooled
    assert _study(store, uid)["state"] == "committed"
