"""Scale-out: two hub API processes and three worker processes on one PostgreSQL and one S3
endpoint (moto's server), delivering 20 studies to an Orthanc and a storescp: each instance
arrives exactly once at each destination, and the work is shared by the workers."""

from __future__ import annotations

import hashlib
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaypacs_dev.generate import GeneratedStudy, generate_study
from relaypacs_shared.wire import format_content_digest
from tests.support.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer, moto_server
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.processes import HubProcess, _Proc, wait_for
from tests.support.storescp import StoreSCP, storescp_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (orthanc_available() and storescp_available()), reason="needs Orthanc and dcmtk"
    ),
]

ADMIN_TOKEN = "admin-" + "e" * 40


class WorkerProcess(_Proc):
    name = "worker"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(
            [sys.executable, "-m", "relaypacs_hub.cli", "worker"], env, workdir / "worker.log"
        )


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    with moto_server(tmp_path) as server:
        yield server


def put_study(client: httpx.Client, base: str, study: GeneratedStudy) -> list[dict[str, str]]:
    manifest = []
    for path in study.files:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        r = client.put(
            f"{base}/api/v1/studies/{study.study_instance_uid}/instances/{ds.SOPInstanceUID}",
            content=data,
            headers={"Content-Digest": format_content_digest(sha)},
        )
        assert r.status_code == 201, r.text
        manifest.append({"sop_instance_uid": str(ds.SOPInstanceUID), "sha256": sha})
    return manifest


def test_two_hubs_three_workers_every_study_exactly_once_everywhere(
    tmp_path: Path, pg_url: str, moto: MotoServer
) -> None:
    bucket = moto.make_bucket()
    with OrthancServer() as orthanc, StoreSCP(aet="ARCHIVE") as scp:
        destinations = tmp_path / "destinations.toml"
        destinations.write_text(
            f"""
[[destinations]]
name = "orthanc"
type = "dicomweb"
profile = "orthanc"
url = "{orthanc.http_url}"
max_batch_instances = 2

[[destinations]]
name = "archive"
type = "dimse"
host = "127.0.0.1"
port = {scp.port}
called_aet = "ARCHIVE"
"""
        )
        shared = {
            "database_url": pg_url,
            "destinations_file": str(destinations),
            "object_store": "s3",
            "s3_endpoint": moto.endpoint,
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
            "s3_bucket": bucket,
            "s3_secure": "false",
            "worker_enabled": "false",
            "admin_token": ADMIN_TOKEN,
        }
        hubs = [HubProcess(tmp_path / f"api{i}", **shared) for i in range(2)]
        for i, hub in enumerate(hubs):
            (tmp_path / f"api{i}").mkdir()
            hub.start()
        worker_env = {
            f"RELAYPACS_HUB_{k.upper()}": v
            # One job at a time per worker process: the three share the 40 jobs between them.
            for k, v in {**shared, "worker_poll_seconds": "0.3", "worker_concurrency": "1"}.items()
        }
        workers = []
        metrics_ports = [free_port() for _ in range(3)]
        for i in range(3):
            (tmp_path / f"w{i}").mkdir()
            env = {
                **worker_env,
                "RELAYPACS_HUB_DATA_DIR": str(tmp_path / f"w{i}"),
                # Three workers on one host: each serves its counters on its own port.
                "RELAYPACS_HUB_WORKER_METRICS_PORT": str(metrics_ports[i]),
            }
            workers.append(WorkerProcess(tmp_path / f"w{i}", env))
            workers[-1].start()
        try:
            studies = [
                generate_study(
                    tmp_path / "src" / str(i), instances=3, seed=200 + i, rows=32, columns=32
                )
                for i in range(20)
            ]
            with httpx.Client(timeout=60) as client:
                for i, study in enumerate(studies):
                    # Bytes to one replica, the commit to the other: nothing is sticky.
                    manifest = put_study(client, hubs[i % 2].url, study)
                    r = client.post(
                        f"{hubs[(i + 1) % 2].url}/api/v1/studies/{study.study_instance_uid}/commit",
                        json={"instances": manifest},
                    )
                    assert r.status_code == 200, r.text

                def all_delivered() -> bool:
                    for i, study in enumerate(studies):
                        body = client.get(
                            f"{hubs[i % 2].url}/api/v1/studies/{study.study_instance_uid}"
                        ).json()
                        states = [d["state"] for d in body["destinations"]]
                        if states != ["done", "done"]:
                            return False
                    return True

                wait_for(all_delivered, 180, "20 studies delivered to both destinations")
                jobs = client.get(
                    f"{hubs[0].url}/api/v1/jobs",
                    params={"limit": 100},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ).json()
                # Prometheus sees every delivery once, whichever worker made it.
                delivered = sum(
                    sample.value
                    for port in metrics_ports
                    for family in text_string_to_metric_families(
                        client.get(f"http://127.0.0.1:{port}/metrics").text
                    )
                    for sample in family.samples
                    if sample.name == "relaypacs_forward_jobs_finished_total"
                    and sample.labels["outcome"] == "delivered"
                )
                assert delivered == 40
            for w in workers:
                assert w.alive(), w.log()[-3000:]
        finally:
            for proc in [*workers, *hubs]:
                if proc.alive():
                    proc.terminate()

        everything = [u for s in studies for u in s.sop_instance_uids]
        # storescp keeps every object it receives under a unique name: duplicates would show.
        assert scp.received() == dict.fromkeys(everything, 1)
        assert orthanc.instance_count() == 60
        for study in studies[::5]:
            for uid, path in zip(study.sop_instance_uids, study.files, strict=True):
                assert orthanc.fetch_instance_file(uid) == path.read_bytes()
        assert jobs["total"] == 40
        assert {(j["destination"], j["state"]) for j in jobs["jobs"]} == {
            ("orthanc", "done"),
            ("archive", "done"),
        }
        # The bytes went through S3, and every worker process took part.
        assert len(list(moto.client().list_objects(bucket, recursive=True))) >= 60
        done_by = Counter(
            m.group(1)
            for w in workers
            for m in re.finditer(r"forward_done .*?worker=(\S+)", w.log())
        )
        assert sum(done_by.values()) == 40, done_by
        assert len(done_by) >= 2, done_by
