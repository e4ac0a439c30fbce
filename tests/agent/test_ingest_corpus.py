"""Everything pydicom ships plus crafted bad inputs, dropped into a watched folder at once.

The expected fate of each file comes from ``validate_file`` (which tests/shared ties to pydicom's
own reading of its files) and the duplicate/conflict rule; the pipeline must agree for every
file, never crash, leave the inbox empty and account for every file exactly once.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import struct
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from relaypacs_agent.ingest.archive import Importer
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy
from relaypacs_shared.dicom import raw_dataset_syntax, validate_file, wrap_raw_dataset
from relaypacs_shared.errors import DicomValidationError

if TYPE_CHECKING:
    from .conftest import AgentDirs

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _save(ds: pydicom.FileDataset, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)


def _read(path: Path) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _crafted(src: Path, out: Path) -> dict[str, str]:
    """Bad inputs, one way each; name -> the reason they must be quarantined with."""
    good = src.read_bytes()
    out.mkdir(parents=True)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (out / name).write_bytes(data)
        expected[name] = reason

    put("zero.dcm", b"", "empty")
    put("random.bin", random.Random(7).randbytes(5000), "not_dicom")
    put("cut-in-header.dcm", good[:300], "truncated")
    put("cut-in-pixels.dcm", good[:-700], "truncated")
    ds = _read(src)
    del ds.SOPInstanceUID
    _save(ds, out / "missing-uid.dcm")
    expected["missing-uid.dcm"] = "missing_uid"
    ds = _read(src)
    ds.StudyInstanceUID = "1.2.03.4"
    _save(ds, out / "malformed-uid.dcm")
    expected["malformed-uid.dcm"] = "malformed_uid"
    raw = _read(src).get_item(0x7FE00010)
    data = bytearray(good)
    data[raw.value_tell - 4 : raw.value_tell] = struct.pack("<I", 0x7FFFFFF0)  # type: ignore[union-attr]
    put("length-past-eof.dcm", bytes(data), "truncated")
    ds = _read(src)
    item = Dataset()
    item.CodeMeaning = "leaf"
    for _ in range(40):
        holder = Dataset()
        holder.ContentSequence = Sequence([item])
        item = holder
    ds["ContentSequence"] = item["ContentSequence"]
    _save(ds, out / "deep.dcm")
    expected["deep.dcm"] = "too_deep"
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.dcm", "w") as f:
        block = bytes(1024 * 1024)
        for _ in range(48):
            f.write(block)
    put("bomb.zip", bomb.getvalue(), "archive_bomb")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.dcm", good)
        zf.writestr("../../escaped.dcm", good)
    put("traversal.zip", evil.getvalue(), "archive_unsafe_path")
    return expected


def test_bundled_and_crafted_files_all_end_where_they_should(
    ingestor: Ingestor, store: Store, dirs: AgentDirs, small_study: GeneratedStudy, tmp_path: Path
) -> None:
    bundled = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    assert len(bundled) > 100
    corpus = dirs.inbox / "bundled"
    corpus.mkdir()
    names: dict[str, Path] = {}
    for p in bundled:
        name = p.relative_to(PYDICOM_TEST_FILES).as_posix().replace("/", "__")
        shutil.copyfile(p, corpus / name)
        names[name] = p
    crafted = _crafted(small_study.files[0], dirs.inbox / "crafted")

    # The oracle, in the order the watcher takes files (sorted walk, one worker).
    expected: dict[str, tuple[str, str]] = {}
    held: dict[str, str] = {}
    kept: dict[str, bytes] = {}  # what the spool must hold for a file: itself, or it wrapped
    for name in sorted(names):
        try:
            info = validate_file(names[name])
            kept[name] = names[name].read_bytes()
        except DicomValidationError as exc:
            # A bare dataset (no Part 10 header) is given one, then judged like any file.
            ts = raw_dataset_syntax(names[name]) if exc.reason == "not_dicom" else None
            wrapped = tmp_path / "oracle" / name
            if ts is None or wrap_raw_dataset(names[name], wrapped, ts) is None:
                expected[name] = ("quarantined", exc.reason)
                continue
            try:
                info = validate_file(wrapped)
            except DicomValidationError as again:
                expected[name] = ("quarantined", again.reason)
                continue
            kept[name] = wrapped.read_bytes()
        if info.sop_instance_uid not in held:
            held[info.sop_instance_uid] = info.sha256
            expected[name] = ("accepted", "")
        elif held[info.sop_instance_uid] == info.sha256:
            expected[name] = ("duplicate", "")
        else:
            expected[name] = ("quarantined", "conflict")
    wrapped_names = {n for n, data in kept.items() if data != names[n].read_bytes()}
    assert wrapped_names == {"rtstruct.dcm", "ExplVR_LitEndNoMeta.dcm"}  # bare datasets
    outcomes = Counter(o for o, _ in expected.values())
    assert outcomes["accepted"] >= 50 and outcomes["quarantined"] >= 10
    assert any(r == "conflict" for _, r in expected.values())

    importer = Importer(ingestor, incoming_dir=tmp_path / "incoming")
    watcher = InboxWatcher(
        dirs.inbox, ingestor, settle_seconds=1.0, scan_interval=1.0, importer=importer
    )
    assert watcher.scan_once(now=0.0) == []
    results = watcher.scan_once(now=5.0)

    total = len(names) + len(crafted)
    assert sum(watcher.results.values()) == total  # every file accounted for exactly once
    assert [p for p in dirs.inbox.rglob("*") if p.is_file()] == []
    rows = store.query("SELECT original_name, reason FROM quarantine")
    got_q = {r["original_name"]: r["reason"] for r in rows}
    want_q = {n: r for n, (o, r) in expected.items() if o == "quarantined"} | crafted
    assert got_q == want_q
    accepted = {r["source_path"] for r in store.query("SELECT source_path FROM instances")}
    want_accepted = {str(corpus / n) for n, (o, _) in expected.items() if o == "accepted"}
    assert accepted == want_accepted
    dups = [r["original_name"] for r in store.query("SELECT original_name FROM duplicates")]
    assert sorted(dups) == sorted(n for n, (o, _) in expected.items() if o == "duplicate")
    assert Counter(r.outcome for r in results) == Counter(watcher.results)
    # What was spooled is byte for byte what was dropped, under its content address.
    for row in store.query("SELECT source_path, spool_path, sha256 FROM instances"):
        spooled = Path(row["spool_path"]).read_bytes()
        assert spooled == kept[Path(row["source_path"]).name]
        assert hashlib.sha256(spooled).hexdigest() == row["sha256"] == Path(row["spool_path"]).stem
    assert not any((dirs.spool.parent / "staging").iterdir())
