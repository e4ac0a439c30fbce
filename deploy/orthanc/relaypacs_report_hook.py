"""Orthanc Python plugin: tell the RelayPACS hub when a study gets a new object.

When a radiologist's reporting system stores a report (an SR, an Encapsulated PDF) into this
Orthanc, the hub normally finds it at its next poll (every 20 s for a young routine study, less
often as the study ages). With this script loaded, Orthanc tells the hub at once: the hub asks
for the report within a couple of seconds and the facility sees it.

Load it with Orthanc's Python plugin (Debian: ``apt install orthanc-python``)::

    "Plugins": ["/usr/share/orthanc/plugins"],
    "PythonScript": "/etc/orthanc/relaypacs_report_hook.py",
    "RelayPACS": {
        "HubUrl": "https://hub.example.org",
        "TokenFile": "/etc/orthanc/relaypacs-webhook-token"
    }

``TokenFile`` holds the hub's ``RELAYPACS_HUB_REPORT_WEBHOOK_TOKEN`` (or set the environment
variable ``RELAYPACS_HOOK_TOKEN``; ``RELAYPACS_HOOK_HUB_URL`` likewise overrides
``HubUrl``). ``CaFile`` names a CA bundle for a hub behind a private CA.

Only objects whose SOP Class can be a report are sent (SR, Encapsulated PDF/CDA): images and the
dose SRs a CT scanner adds are not. The hub is told the Study Instance UID and the SOP Class
UID, nothing about the patient. Calls run on a thread of their own, so Orthanc never waits for
the hub; an unreachable hub is retried a few times, and the hub's own polling remains the
fallback.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request

import orthanc  # provided by Orthanc's Python plugin

# SR documents, Encapsulated PDF and CDA: what the hub counts as a report (it checks again).
MAYBE_REPORT = {
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
}
TRIES = 5
PATH = "/api/v1/reports/archive-changes"


def _settings() -> tuple[str, str, ssl.SSLContext | None]:
    config = json.loads(orthanc.GetConfiguration()).get("RelayPACS", {})
    url = os.environ.get("RELAYPACS_HOOK_HUB_URL") or config.get("HubUrl", "")
    token = os.environ.get("RELAYPACS_HOOK_TOKEN", "")
    if not token and config.get("TokenFile"):
        with open(config["TokenFile"], encoding="utf-8") as f:
            token = f.read().strip()
    context = ssl.create_default_context(cafile=config["CaFile"]) if config.get("CaFile") else None
    return url.rstrip("/"), token, context


HUB_URL, TOKEN, TLS = _settings()
_pending: queue.Queue[str] = queue.Queue(maxsize=10_000)


def _notify(instance_id: str) -> None:
    sop_class = orthanc.RestApiGet(f"/instances/{instance_id}/metadata/SopClassUid").decode()
    if sop_class not in MAYBE_REPORT:
        return
    study = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}/study"))
    body = json.dumps(
        {
            "study_instance_uid": study["MainDicomTags"]["StudyInstanceUID"],
            "sop_class_uid": sop_class,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (HUB_URL is checked to be http(s) below)
        HUB_URL + PATH,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    for attempt in range(TRIES):
        try:
            with urllib.request.urlopen(request, timeout=10, context=TLS) as answer:  # noqa: S310
                answer.read()
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # a wrong token or a refused UID: trying again will not help
                orthanc.LogWarning(f"RelayPACS hub refused the change note: HTTP {exc.code}")
                return
        except OSError as exc:
            if attempt == TRIES - 1:
                orthanc.LogWarning(f"RelayPACS hub unreachable, it will poll instead: {exc}")
                return
        time.sleep(2**attempt)


def _worker() -> None:
    while True:
        instance_id = _pending.get()
        try:
            _notify(instance_id)
        except Exception as exc:  # never let one object stop the notes for the next
            orthanc.LogWarning(f"RelayPACS change note failed: {exc}")


def on_change(change_type: int, level: int, resource_id: str) -> None:
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        try:
            _pending.put_nowait(resource_id)
        except queue.Full:
            orthanc.LogWarning("RelayPACS change notes are backing up; the hub will poll")


if HUB_URL and not HUB_URL.startswith(("http://", "https://")):
    orthanc.LogError(f"RelayPACS report hook: HubUrl must be http(s)://, not {HUB_URL!r}")
elif HUB_URL and TOKEN:
    threading.Thread(target=_worker, name="relaypacs-hook", daemon=True).start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"RelayPACS report hook: new reports are announced to {HUB_URL}")
else:
    orthanc.LogWarning("RelayPACS report hook: no HubUrl or token set; not announcing reports")
