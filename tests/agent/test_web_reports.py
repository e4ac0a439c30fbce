"""The LAN app's report routes answer the upload app in the declared shape
(relaypacs_agent.web.wire): the list without text, a study's report with every report of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relaypacs_agent.reports import ReportInbox
from tests.agent.webfix import web_app

UID = "1.2.826.0.1.3680043.9.4241"


def _report(report_id: int, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": report_id,
        "study_instance_uid": UID,
        "status": status,
        "kind": extra.pop("kind", "text"),
        "title": "CT head",
        "text": extra.pop("text", ""),
        "received_at": "2026-12-06T03:00:00Z",
        **extra,
    }


async def test_reports_list_and_a_study_report_in_the_declared_shape(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        inbox = ReportInbox(web.store, tmp_path / "reports")  # the same catalogue as the app's
        inbox.take(1, _report(11, "preliminary", text="Preliminary: no bleed."), None)
        inbox.take(2, _report(12, "final", text="Final: no acute abnormality."), None)
        h = await web.login("clinician1")
        listed = (await web.client.get("/api/v1/reports", headers=h)).json()["reports"]
        assert [(r["id"], r["status"], r["study_status"]) for r in listed] == [
            (12, "final", "final")
        ]
        assert "text" not in listed[0]
        assert listed[0]["hub_received_at"] == "2026-12-06T03:00:00Z"
        assert isinstance(listed[0]["received_at"], float) and listed[0]["document"] is None

        r = await web.client.get(f"/api/v1/studies/{UID}/report", headers=h)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["status"] == "final" and body["text"] == "Final: no acute abnormality."
        assert body["report_id"] == 12 and body["document_report_id"] is None
        assert [x["id"] for x in body["reports"]] == [12, 11]
        assert set(body["reports"][1]) == {
            "id",
            "study_instance_uid",
            "status",
            "kind",
            "title",
            "text",
            "document",
            "hub_received_at",
            "received_at",
        }

        missing = await web.client.get("/api/v1/studies/1.2.3/report", headers=h)
        assert missing.status_code == 404
        assert missing.json() == {
            "code": "no_report",
            "detail": "there is no report for this study yet",
        }
        # No hub to relay Web Push subscriptions: a problem in the same shape.
        key = await web.client.get("/api/v1/push/key", headers=h)
        assert key.status_code == 503 and key.json()["code"] == "no_hub"
