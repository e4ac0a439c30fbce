"""HL7 v2 ORU^R01 over a real MLLP socket: a result for a delivered study's accession number
marks it reported (preliminary, then final); an unknown accession, a message that is not an
ORU^R01 and bytes that are not HL7 are answered with the reason, and nothing is recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydicom

from relaypacs_dev.generate import generate_study
from tests.hub.conftest import HubClient, hub_settings, write_destinations
from tests.support.orthanc import free_port

START, END = b"\x0b", b"\x1c\x0d"


def oru(accession: str, status: str, *lines: str, control: str = "MSG0001") -> bytes:
    obx = "\r".join(
        f"OBX|{i}|TX|18782-3^Radiology Study observation^LN||{line}||||||{status}"
        for i, line in enumerate(lines, start=1)
    )
    message = (
        f"MSH|^~\\&|RIS|CENTRAL|RELAYPACS|HUB|20261205103000||ORU^R01|{control}|P|2.5\r"
        "PID|||RPT-0001||REPORT^TEST\r"
        f"OBR|1|PL123|FI456|70450^CT HEAD WITHOUT CONTRAST^CPT|||20261205101500|||||||||||"
        f"{accession}|||||||{status}\r{obx}\r"
    )
    return START + message.encode() + END


async def _exchange(port: int, *frames: bytes) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for frame in frames:  # one connection, several messages, as a RIS interface does
            writer.write(frame)
            await writer.drain()
            await reader.readuntil(START)
            answers.append((await reader.readuntil(END))[:-2].decode())
    finally:
        writer.close()
    return answers


async def test_oru_over_mllp_marks_the_study_reported(tmp_path: Path, make_hub: Any) -> None:
    archive = tmp_path / "archive"
    dests = write_destinations(
        tmp_path / "d.toml", {"name": "archive", "type": "folder", "path": str(archive)}
    )
    port = free_port()
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests, hl7_port=port))
    study = generate_study(tmp_path / "ct", instances=2, rows=16, columns=16, seed=77)
    uid = study.study_instance_uid
    accession = str(pydicom.dcmread(study.files[0], stop_before_pixels=True).AccessionNumber)
    await hub.send(study)
    await hub.wait_delivered(uid)

    async def status() -> dict[str, Any]:
        r = await hub.client.get(f"/api/v1/studies/{uid}/reports", headers=hub.admin)
        body: dict[str, Any] = r.json()
        return body

    # The poller notes the study's accession number right after delivery.
    for _ in range(100):
        unknown = await _exchange(port, oru(accession, "P", "Preliminary: no fracture."))
        if "MSA|AA" in unknown[0]:
            break
        assert "no delivered study has this accession number" in unknown[0]
        await asyncio.sleep(0.1)
    assert (await status())["report_status"] == "preliminary"

    answers = await _exchange(
        port,
        oru(accession, "F", "No skull fracture.", "Impression: normal\\.br\\CT head.", control="2"),
        oru("NO-SUCH-ACC", "F", "text", control="3"),
        START + b"MSH|^~\\&|RIS|X|Y|Z|20261205||ADT^A01|4|P|2.5\r" + END,
        START + b"this is not HL7" + END,
    )
    assert answers[0].endswith("MSA|AA|2|\r")
    assert "MSA|AE|3|no delivered study has this accession number" in answers[1]
    assert "MSA|AR|4|only ORU R01 results are taken, not ADT A01" in answers[2]
    assert "MSA|AR||not an HL7 v2 message" in answers[3]
    body = await status()
    assert body["report_status"] == "final"
    assert body["reports"][0]["source"] == "hl7"
    assert body["reports"][0]["text"] == "No skull fracture.\nImpression: normal\nCT head."
    assert body["reports"][0]["title"] == "CT HEAD WITHOUT CONTRAST"
    assert len(body["reports"]) == 2
