"""The dashboard's read API (study list, stats), and the verifier feed agents cache for logins."""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import event, select, update

from relaypacs_dev.generate import generate_study
from relaypacs_hub.auth import devices
from relaypacs_hub.db.models import (
    AuditLogEntry,
    ForwardJob,
    Study,
    StudyFacility,
    StudyReport,
    StudyRoute,
    User,
    utcnow,
)
from relaypacs_hub.services.overview import percentile
from relaypacs_shared.wire import format_content_digest
from tests.hub.authfix import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    PASSWORD,
    add_user,
    auth_settings,
    bearer,
    hub_client,
)

ADMIN = bearer(ADMIN_TOKEN)
AGENT = bearer(AGENT_TOKEN)
UID = "1.2.826.0.1.3680043.9.7777."


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return None


async def _device(app: Any, facility: str) -> dict[str, str]:
    sm = app.state.hub.sessionmaker
    code, _ = await devices.issue_code(sm, "test", facility, 10)
    device, secret = await devices.enroll(sm, code, f"agent-{facility}")
    return bearer(devices.credential(device.id, secret))


async def _user_token(app: Any, username: str, role: str, facilities: list[str]) -> dict[str, str]:
    await app.state.hub.auth.create_user("test", username, PASSWORD, role, facilities)
    return bearer(app.state.hub.auth.issuer.issue(username, role, facilities))


# -- verifier feed -------------------------------------------------------------------------------


async def test_verifier_feed_is_scoped_to_the_device_facility(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, require_totp_roles="radiologist")
    async with hub_client(settings) as (app, client):
        sm = app.state.hub.sessionmaker
        await add_user(app, "alice", "radiologist", ["fac-a"])
        await add_user(app, "bob", "clinician", ["fac-b"])
        await add_user(app, "carol", "admin", ["fac-a", "fac-b"])
        await add_user(app, "dave", "radiographer", ["fac-a"])
        # Belongs to no facility (add_user would give them fac-a).
        await app.state.hub.auth.create_user("test", "erin", PASSWORD, "admin", [])
        await add_user(app, "frank", "clinician", ["fac-a"])
        locked = utcnow() + timedelta(minutes=5)
        async with sm() as session, session.begin():
            await session.execute(update(User).where(User.username == "dave").values(disabled=True))
            await session.execute(
                update(User)
                .where(User.username == "alice")
                .values(totp_secret="JBSWY3DPEHPK3PXP", totp_enabled=True, totp_last_step=7)
            )
            # An enrollment started but never confirmed: the secret is not trusted yet.
            await session.execute(
                update(User)
                .where(User.username == "frank")
                .values(totp_secret="KRSXG5CTMVRXEZLU", locked_until=locked)
            )

        device_a = await _device(app, "fac-a")
        r = await client.get("/api/v1/devices/verifiers", headers=device_a)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert datetime.fromisoformat(body["generated_at"]).tzinfo is not None
        users = {u["username"]: u for u in body["users"]}
        assert sorted(users) == ["alice", "carol", "frank"]
        alice = users["alice"]
        assert set(alice) == {
            "username",
            "role",
            "facilities",
            "password_hash",
            "totp_secret",
            "totp_required",
            "totp_last_step",
        }
        assert alice["role"] == "radiologist" and alice["facilities"] == ["fac-a"]
        assert alice["password_hash"].startswith("$argon2id$")
        assert PasswordHasher().verify(alice["password_hash"], PASSWORD)
        with pytest.raises(VerificationError):
            PasswordHasher().verify(alice["password_hash"], "wrong password")
        assert alice["totp_secret"] == "JBSWY3DPEHPK3PXP"
        assert alice["totp_required"] is True
        assert alice["totp_last_step"] == 7  # a code works once, at the hub or any agent
        assert users["carol"]["totp_required"] is False
        assert users["frank"]["totp_secret"] is None  # not confirmed
        # A lock at the hub (a password spray from the internet) does not reach the LAN.
        assert "locked_until" not in users["frank"]

        device_b = await _device(app, "fac-b")
        r = await client.get("/api/v1/devices/verifiers", headers=device_b)
        assert sorted(u["username"] for u in r.json()["users"]) == ["bob", "carol"]

        # The legacy agent token acts for every facility: every user who is not disabled.
        r = await client.get("/api/v1/devices/verifiers", headers=AGENT)
        assert r.status_code == 200
        names = sorted(u["username"] for u in r.json()["users"])
        assert names == ["alice", "bob", "carol", "erin", "frank"]

        # People and the admin token do not get verifiers; no credential is a 401.
        for headers in (await _user_token(app, "root", "admin", ["fac-a"]), ADMIN):
            r = await client.get("/api/v1/devices/verifiers", headers=headers)
            assert r.status_code == 403, r.text
        assert (await client.get("/api/v1/devices/verifiers")).status_code == 401

        async with sm() as session:
            reads = list(
                await session.scalars(
                    select(AuditLogEntry)
                    .where(AuditLogEntry.action == "device.verifiers_read")
                    .order_by(AuditLogEntry.seq)
                )
            )
        assert [(e.actor.startswith("device:"), e.target) for e in reads] == [
            (True, "fac-a"),
            (True, "fac-b"),
            (False, "*"),
        ]
        assert reads[2].actor == "agent"
        assert all("argon2" not in e.details_json for e in reads)


async def test_a_totp_step_claimed_by_an_agent_is_used_up_at_the_hub(tmp_path: Path) -> None:
    """A code used at an agent's LAN login cannot sign in at the hub, and a code the hub saw
    used is answered "not accepted" to the agent: one use across the agent and the hub."""
    import pyotp

    async with hub_client(auth_settings(tmp_path)) as (app, client):
        secret = pyotp.random_base32()
        await add_user(app, "alice", "radiographer", ["fac-a"])
        await add_user(app, "bob", "radiographer", ["fac-b"])
        async with app.state.hub.sessionmaker() as session, session.begin():
            await session.execute(
                update(User)
                .where(User.username.in_(["alice", "bob"]))
                .values(totp_secret=secret, totp_enabled=True)
            )
        device_a = await _device(app, "fac-a")
        totp = pyotp.TOTP(secret)
        now = datetime.now()
        code, step = totp.at(now), totp.timecode(now)
        claim = {"username": "alice", "step": step}
        r = await client.post("/api/v1/devices/totp-steps", json=claim, headers=device_a)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": True}
        # The same code at the hub's own sign-in: refused.
        login = {"username": "alice", "password": PASSWORD, "totp_code": code}
        r = await client.post("/api/v1/auth/login", json=login)
        assert r.status_code == 401 and r.json()["code"] == "totp_required"
        # Claiming it again (a second agent, a replay): not accepted.
        r = await client.post("/api/v1/devices/totp-steps", json=claim, headers=device_a)
        assert r.json() == {"accepted": False}
        # A user of another facility is not this device's to claim for.
        r = await client.post(
            "/api/v1/devices/totp-steps", json={"username": "bob", "step": step}, headers=device_a
        )
        assert r.status_code == 404
        # The next code works at the hub, and the verifier feed then carries its step.
        later = now + timedelta(seconds=30)
        r = await client.post("/api/v1/auth/login", json={**login, "totp_code": totp.at(later)})
        assert r.status_code == 200, r.text
        feed = (await client.get("/api/v1/devices/verifiers", headers=device_a)).json()
        alice = next(u for u in feed["users"] if u["username"] == "alice")
        assert alice["totp_last_step"] == totp.timecode(later)
        # People cannot call it: only enrolled devices.
        token = bearer(app.state.hub.auth.issuer.issue("alice", "radiographer", ["fac-a"]))
        r = await client.post("/api/v1/devices/totp-steps", json=claim, headers=token)
        assert r.status_code in (401, 403)


async def test_verifier_feed_is_open_only_where_anonymous_agents_are_allowed(
    tmp_path: Path,
) -> None:
    # Closed by default: an anonymous caller never sees password hashes or TOTP secrets.
    async with hub_client(auth_settings(tmp_path / "closed", agent_token=None)) as (_, client):
        r = await client.get("/api/v1/devices/verifiers")
        assert r.status_code == 401
        assert "argon2" not in r.text
    # A development hub that opted in to agents without a credential serves them the feed.
    settings = auth_settings(tmp_path / "open", agent_token=None, anonymous_agents=True)
    async with hub_client(settings) as (app, client):
        await add_user(app, "alice", "radiologist", ["fac-a"])
        r = await client.get("/api/v1/devices/verifiers")
        assert r.status_code == 200
        assert [u["username"] for u in r.json()["users"]] == ["alice"]


# -- study list and stats ------------------------------------------------------------------------


async def _seed(
    app: Any,
    n: int,
    *,
    facility: str | None = None,
    device_facility: str | None = None,
    state: str = "committed",
    received: datetime,
    jobs: list[tuple[str, str, datetime | None, float | None]] = (),  # type: ignore[assignment]
) -> str:
    """A study in the database with its forwarding jobs (destination, state, completed, ttp)."""
    uid = f"{UID}{n}"
    async with app.state.hub.sessionmaker() as session, session.begin():
        session.add(
            Study(
                study_instance_uid=uid,
                state=state,
                service_level="stat" if n % 2 else "routine",
                instance_count=n,
                first_received_at=received,
                committed_at=received + timedelta(seconds=5) if state == "committed" else None,
            )
        )
        await session.flush()
        if state == "committed":
            session.add(
                StudyRoute(
                    study_instance_uid=uid,
                    facility=facility,
                    agent_received_at=received - timedelta(seconds=30),
                )
            )
        if device_facility is not None:
            session.add(StudyFacility(study_instance_uid=uid, facility=device_facility))
        for dest, job_state, completed, ttp in jobs:
            session.add(
                ForwardJob(
                    study_instance_uid=uid,
                    destination=dest,
                    state=job_state,
                    attempts=3 if job_state == "dead" else 1,
                    last_error="association rejected" if job_state == "dead" else None,
                    completed_at=completed,
                    time_to_pacs_seconds=ttp,
                )
            )
    return uid


async def _seed_all(app: Any) -> dict[str, str]:
    now = utcnow()
    t = now - timedelta(hours=1)
    return {
        "delivered": await _seed(
            app,
            1,
            facility="fac-a",
            received=t,
            jobs=[
                ("pacs-a", "done", now - timedelta(minutes=30), 40.0),
                ("pacs-b", "done", now - timedelta(minutes=20), 60.0),
            ],
        ),
        "failed": await _seed(
            app,
            2,
            facility="fac-a",
            received=t + timedelta(minutes=1),
            jobs=[
                ("pacs-a", "done", now - timedelta(minutes=10), 10.0),
                ("pacs-b", "dead", None, None),
            ],
        ),
        # A device's record of the facility (before any commit).
        "receiving": await _seed(
            app, 3, device_facility="fac-b", state="receiving", received=t + timedelta(minutes=2)
        ),
        "pending": await _seed(
            app, 4, received=t + timedelta(minutes=3), jobs=[("pacs-a", "pending", None, None)]
        ),
        # Committed, routed nowhere: no job, so not delivered.
        "unrouted": await _seed(app, 5, facility="fac-b", received=t + timedelta(minutes=4)),
        "held": await _seed(
            app,
            6,
            facility="fac-a",
            received=t + timedelta(minutes=5),
            jobs=[("pacs-a", "done", now, 20.0), ("pacs-b", "held", None, None)],
        ),
        # Delivered three days ago: not in the last 24 h, still in the 7-day timings.
        "old": await _seed(
            app,
            7,
            facility="fac-b",
            received=now - timedelta(days=3, hours=1),
            jobs=[("pacs-a", "done", now - timedelta(days=3), 100.0)],
        ),
    }


async def _list(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> Any:
    r = await client.get("/api/v1/studies", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_study_list_states_order_filters_and_scope(
    tmp_path: Path, database_url: str | None
) -> None:
    async with hub_client(auth_settings(tmp_path, database_url=database_url)) as (app, client):
        uids = await _seed_all(app)
        body = await _list(client, ADMIN)
        assert body["total"] == 7
        order = ["held", "unrouted", "pending", "receiving", "failed", "delivered", "old"]
        assert [s["study_instance_uid"] for s in body["studies"]] == [uids[k] for k in order]
        by_uid = {s["study_instance_uid"]: s for s in body["studies"]}
        states = {k: by_uid[uids[k]]["state"] for k in uids}
        assert states == {
            "delivered": "delivered",
            "failed": "failed",
            "receiving": "receiving",
            "pending": "committed",
            "unrouted": "committed",
            "held": "committed",
            "old": "delivered",
        }

        delivered = by_uid[uids["delivered"]]
        assert set(delivered) == {
            "study_instance_uid",
            "facility",
            "service_level",
            "state",
            "instance_count",
            "first_received_at",
            "agent_received_at",
            "committed_at",
            "delivered_at",
            "time_to_pacs_seconds",
            "destinations",
            "clinical_history",
            "referring_clinician",
            "modalities",
            "study_date",
            "study_description",
            "accession_number",
            "report_status",
            "reported_at",
            "first_delivered_at",
            "time_to_report_seconds",
        }
        assert delivered["facility"] == "fac-a"
        assert delivered["time_to_pacs_seconds"] == 60.0
        pacs_b = delivered["destinations"][1]
        last = datetime.fromisoformat(pacs_b["completed_at"])
        assert last.tzinfo is not None  # times carry their offset: a browser reads them right
        assert datetime.fromisoformat(delivered["delivered_at"]) == last
        assert datetime.fromisoformat(delivered["agent_received_at"]) < datetime.fromisoformat(
            delivered["first_received_at"]
        )
        assert [d["name"] for d in delivered["destinations"]] == ["pacs-a", "pacs-b"]
        assert set(pacs_b) == {
            "name",
            "state",
            "attempts",
            "last_error",
            "completed_at",
            "time_to_pacs_seconds",
        }
        failed = by_uid[uids["failed"]]
        assert failed["delivered_at"] is None
        assert failed["time_to_pacs_seconds"] == 10.0
        assert failed["destinations"][1] == {
            "name": "pacs-b",
            "state": "dead",
            "attempts": 3,
            "last_error": "association rejected",
            "completed_at": None,
            "time_to_pacs_seconds": None,
        }
        receiving = by_uid[uids["receiving"]]
        assert receiving["facility"] == "fac-b" and receiving["destinations"] == []
        assert receiving["committed_at"] is None and receiving["agent_received_at"] is None
        assert by_uid[uids["pending"]]["facility"] is None
        assert by_uid[uids["held"]]["delivered_at"] is None

        # Filters, and pages with the total of the filter.
        assert [
            s["study_instance_uid"] for s in (await _list(client, ADMIN, state="failed"))["studies"]
        ] == [uids["failed"]]
        got = await _list(client, ADMIN, state="delivered")
        assert got["total"] == 2
        assert [s["study_instance_uid"] for s in got["studies"]] == [uids["delivered"], uids["old"]]
        got = await _list(client, ADMIN, state="committed")
        assert {s["study_instance_uid"] for s in got["studies"]} == {
            uids["pending"],
            uids["unrouted"],
            uids["held"],
        }
        got = await _list(client, ADMIN, facility="fac-b")
        assert [s["study_instance_uid"] for s in got["studies"]] == [
            uids["unrouted"],
            uids["receiving"],
            uids["old"],
        ]
        got = await _list(client, ADMIN, limit=2, offset=1)
        assert got["total"] == 7
        assert [s["study_instance_uid"] for s in got["studies"]] == [
            uids["unrouted"],
            uids["pending"],
        ]
        assert (await _list(client, ADMIN, offset=50))["studies"] == []

        # A radiologist sees the studies of their facilities; an admin user sees all.
        radiologist = await _user_token(app, "rad", "radiologist", ["fac-a"])
        got = await _list(client, radiologist)
        assert got["total"] == 3
        assert {s["facility"] for s in got["studies"]} == {"fac-a"}
        got = await _list(client, radiologist, facility="fac-b")
        assert got == {"total": 0, "studies": []}
        nowhere = await _user_token(app, "rad0", "radiologist", [])
        assert (await _list(client, nowhere))["total"] == 0
        admin_b = await _user_token(app, "adm", "admin", ["fac-b"])
        assert (await _list(client, admin_b))["total"] == 7

        # Statistics, for everyone and for one facility.
        r = await client.get("/api/v1/stats", headers=ADMIN)
        assert r.status_code == 200, r.text
        stats = r.json()
        assert stats["studies_by_state"] == {
            "receiving": 1,
            "committed": 3,
            "delivered": 2,
            "failed": 1,
        }
        assert stats["jobs_by_state"] == {
            "pending": 1,
            "running": 0,
            "held": 1,
            "done": 5,
            "dead": 1,
        }
        assert stats["dead_jobs"] == 1
        assert stats["delivered_24h"] == 1
        times = sorted([40.0, 60.0, 10.0, 20.0, 100.0])
        assert stats["time_to_pacs_median_seconds"] == pytest.approx(40.0)
        assert stats["time_to_pacs_p95_seconds"] == pytest.approx(percentile(times, 0.95))
        assert stats["time_to_pacs_p95_seconds"] == pytest.approx(92.0)

        r = await client.get("/api/v1/stats", headers=radiologist)
        scoped = r.json()
        assert scoped["studies_by_state"] == {
            "receiving": 0,
            "committed": 1,
            "delivered": 1,
            "failed": 1,
        }
        assert scoped["jobs_by_state"]["done"] == 4
        assert scoped["dead_jobs"] == 1
        assert scoped["delivered_24h"] == 1
        assert scoped["time_to_pacs_median_seconds"] == pytest.approx(30.0)
        r = await client.get("/api/v1/stats", headers=nowhere)
        assert r.json()["studies_by_state"] == dict.fromkeys(
            ("receiving", "committed", "delivered", "failed"), 0
        )
        assert r.json()["time_to_pacs_median_seconds"] is None


async def test_waiting_for_a_report_and_time_to_report(
    tmp_path: Path, database_url: str | None
) -> None:
    """The dashboard's report column and counts: a delivered study with no report yet is
    waiting (and counted, with how long the oldest has waited); a final one shows its time to
    report; ``?report=`` filters; a radiologist sees only their facilities' counts."""
    settings = auth_settings(tmp_path, database_url=database_url, report_poll_enabled=False)
    async with hub_client(settings) as (app, client):
        uids = await _seed_all(app)
        now = utcnow()
        async with app.state.hub.sessionmaker() as session, session.begin():
            for row in [
                StudyReport(
                    study_instance_uid=uids["delivered"],
                    facility="fac-a",
                    delivered_at=now - timedelta(minutes=20),
                ),
                StudyReport(
                    study_instance_uid=uids["old"],
                    facility="fac-b",
                    delivered_at=now - timedelta(days=3),
                    report_status="amended",
                    final_at=now - timedelta(days=2),
                    amended_at=now - timedelta(hours=5),
                    time_to_report_seconds=86_400.0,
                ),
                # A report posted for a study never delivered: not a waiting study.
                StudyReport(study_instance_uid=uids["unrouted"], facility="fac-b"),
            ]:
                await session.merge(row)  # the hub's report watch may have seen them first
        by_uid = {s["study_instance_uid"]: s for s in (await _list(client, ADMIN))["studies"]}
        assert by_uid[uids["delivered"]]["report_status"] == "waiting"
        assert by_uid[uids["delivered"]]["reported_at"] is None
        waited = datetime.fromisoformat(by_uid[uids["delivered"]]["first_delivered_at"])
        assert waited == datetime.fromisoformat(
            (now - timedelta(minutes=20)).isoformat() + "+00:00"
        )
        old = by_uid[uids["old"]]
        assert old["report_status"] == "amended" and old["time_to_report_seconds"] == 86_400.0
        assert datetime.fromisoformat(old["reported_at"]) == datetime.fromisoformat(
            (now - timedelta(hours=5)).isoformat() + "+00:00"
        )
        assert by_uid[uids["unrouted"]]["report_status"] is None
        got = await _list(client, ADMIN, report="waiting")
        assert [s["study_instance_uid"] for s in got["studies"]] == [uids["delivered"]]
        assert got["total"] == 1
        got = await _list(client, ADMIN, report="amended")
        assert [s["study_instance_uid"] for s in got["studies"]] == [uids["old"]]
        r = await client.get("/api/v1/studies", headers=ADMIN, params={"report": "lost"})
        assert r.status_code == 422

        stats = (await client.get("/api/v1/stats", headers=ADMIN)).json()
        assert stats["waiting_for_report"] == 1
        assert 20 * 60 - 5 <= stats["oldest_waiting_report_seconds"] <= 20 * 60 + 60
        # Finalised two days ago: within the 7-day window of the time to report.
        assert stats["time_to_report_median_seconds"] == 86_400.0
        assert stats["time_to_report_p95_seconds"] == 86_400.0
        radiologist_b = await _user_token(app, "rad-b", "radiologist", ["fac-b"])
        scoped = (await client.get("/api/v1/stats", headers=radiologist_b)).json()
        assert scoped["waiting_for_report"] == 0
        assert scoped["oldest_waiting_report_seconds"] is None
        assert scoped["time_to_report_median_seconds"] == 86_400.0


async def test_study_list_and_stats_are_for_radiologists_and_admins(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        device = await _device(app, "fac-a")
        for role in ("clinician", "radiographer"):
            token = await _user_token(app, f"u-{role}", role, ["fac-a"])
            for path in ("/api/v1/studies", "/api/v1/stats"):
                assert (await client.get(path, headers=token)).status_code == 403
        for headers in (AGENT, device):
            for path in ("/api/v1/studies", "/api/v1/stats"):
                assert (await client.get(path, headers=headers)).status_code == 403
        for path in ("/api/v1/studies", "/api/v1/stats"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=ADMIN)).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"offset": 2**31},
        {"offset": 2**63},
        {"offset": -1},
        {"limit": 0},
        {"limit": 201},
        {"state": "dead"},
        {"facility": ""},
        {"facility": "x" * 65},
        {"facility": "a\x00b"},
    ],
)
async def test_study_list_refuses_out_of_range_queries(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        r = await client.get("/api/v1/studies", headers=ADMIN, params=params)
        assert r.status_code == 422, r.text
        r = await client.get(
            "/api/v1/studies", headers=ADMIN, params={"offset": 2**31 - 1, "limit": 200}
        )
        assert r.status_code == 200 and r.json()["studies"] == []


async def test_a_page_of_200_studies_takes_a_constant_number_of_queries(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        now = utcnow()
        for i in range(1, 211):
            await _seed(
                app,
                i,
                facility="fac-a",
                received=now - timedelta(minutes=i),
                jobs=[("pacs-a", "done", now, float(i)), ("pacs-b", "pending", None, None)],
            )
        engine = app.state.hub.sessionmaker.kw["bind"].sync_engine
        statements: list[str] = []
        # The hub's own background loops (report poller, retention) share the engine; count only
        # what this request runs, recognised by a context variable the request task inherits.
        in_request: ContextVar[bool] = ContextVar("in_request", default=False)

        def count(*args: Any) -> None:
            if in_request.get():
                statements.append(args[2])

        event.listen(engine, "before_cursor_execute", count)
        token = in_request.set(True)
        try:
            body = await _list(client, ADMIN, limit=200)
        finally:
            in_request.reset(token)
            event.remove(engine, "before_cursor_execute", count)
        assert body["total"] == 210 and len(body["studies"]) == 200
        assert all(len(s["destinations"]) == 2 for s in body["studies"])
        assert 1 <= len(statements) <= 4, "\n---\n".join(statements)


async def test_a_device_committed_study_is_listed_with_its_facility(tmp_path: Path) -> None:
    st = generate_study(tmp_path / "src", instances=1, seed=31, rows=32, columns=32)
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        device = await _device(app, "fac-a")
        data = st.files[0].read_bytes()
        ds = pydicom.dcmread(st.files[0], stop_before_pixels=True)
        r = await client.put(
            f"/api/v1/studies/{st.study_instance_uid}/instances/{ds.SOPInstanceUID}",
            content=data,
            headers={
                **device,
                "Content-Digest": format_content_digest(hashlib.sha256(data).hexdigest()),
            },
        )
        assert r.status_code == 201, r.text
        listed = (await _list(client, ADMIN))["studies"]
        assert [(s["state"], s["facility"]) for s in listed] == [("receiving", "fac-a")]
        r = await client.post(
            f"/api/v1/studies/{st.study_instance_uid}/commit",
            json={
                "instances": [
                    {
                        "sop_instance_uid": ds.SOPInstanceUID,
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                ],
                "clinical_history": "fall from height, query skull fracture",
                "referring_clinician": "Dr Ama Mensah",
            },
            headers=device,
        )
        assert r.status_code == 200, r.text
        listed = (await _list(client, ADMIN))["studies"]
        assert [(s["state"], s["facility"], s["instance_count"]) for s in listed] == [
            ("committed", "fac-a", 1)
        ]
        assert listed[0]["committed_at"] is not None
        # What the sender wrote reaches the reader with the study.
        assert listed[0]["clinical_history"] == "fall from height, query skull fracture"
        assert listed[0]["referring_clinician"] == "Dr Ama Mensah"
        # The study's facts come from the instance's own header, for the list and analytics.
        study = listed[0]
        assert study["modalities"] == ["CT"]
        assert study["study_description"] == str(ds.StudyDescription)
        assert study["accession_number"] == str(ds.AccessionNumber)
        date = str(ds.StudyDate)
        assert study["study_date"] == f"{date[:4]}-{date[4:6]}-{date[6:]}"
        # Searchable by description, accession, modality, facility or the start of the UID.
        for q in ("head synth", str(ds.AccessionNumber), "ct", "FAC-A", st.study_instance_uid[:12]):
            found = (await _list(client, ADMIN, q=q))["studies"]
            assert [s["study_instance_uid"] for s in found] == [st.study_instance_uid], q
        for q in ("MR", "fac-b", "%", "_", "9.9.9"):
            assert (await _list(client, ADMIN, q=q))["studies"] == [], q


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 0.95) == pytest.approx(95.05)
