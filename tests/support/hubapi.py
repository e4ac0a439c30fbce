"""Talking to a running hub process over HTTP the way an agent does, for tests that need a study
at the hub without an agent in between."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pydicom

from relaypacs_dev.generate import GeneratedStudy
from relaypacs_shared.wire import CommitRequest, ManifestEntry, format_content_digest


def send_study(hub_url: str, study: GeneratedStudy, **commit: Any) -> str:
    """PUT each instance with its digest, then commit the study naming them all (``commit``: the
    other CommitRequest fields: service level, facility, clinical history...). The Study UID."""
    entries = []
    for path in study.files:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        r = httpx.put(
            f"{hub_url}/api/v1/studies/{study.study_instance_uid}/instances/{sop}",
            content=data,
            headers={
                "Content-Type": "application/dicom",
                "Content-Digest": format_content_digest(sha),
            },
            timeout=30,
        )
        assert r.status_code in (200, 201), r.text
        entries.append(ManifestEntry(sop_instance_uid=sop, sha256=sha))
    r = httpx.post(
        f"{hub_url}/api/v1/studies/{study.study_instance_uid}/commit",
        json=CommitRequest(instances=entries, **commit).model_dump(mode="json"),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return study.study_instance_uid
