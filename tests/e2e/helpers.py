"""What the end-to-end tests drop and how they check what arrived."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom

from relaypacs_dev.generate import GeneratedStudy, generate_study


@dataclass
class Drop:
    studies: list[GeneratedStudy]
    originals: dict[str, bytes]  # SOP Instance UID -> bytes
    files: list[Path]  # as they lie in the source folder

    @property
    def instance_count(self) -> int:
        return len(self.originals)


def make_three_studies(source: Path, seed: int = 100) -> Drop:
    """A CT, an MR and a second CT: 106 instances in all, small matrices to keep tests quick."""
    specs = [("CT", 40, 2), ("MR", 36, 3), ("CT", 30, 1)]
    studies = [
        generate_study(
            source / f"study{i}",
            modality=mod,  # type: ignore[arg-type]
            instances=n,
            series=series,
            seed=seed + i,
            rows=128,
            columns=128,
        )
        for i, (mod, n, series) in enumerate(specs)
    ]
    originals: dict[str, bytes] = {}
    files: list[Path] = []
    for st in studies:
        for f, sop in zip(st.files, st.sop_instance_uids, strict=True):
            originals[sop] = f.read_bytes()
            files.append(f)
    return Drop(studies, originals, files)


def copy_tree(src: Path, dest: Path) -> int:
    n = 0
    for f in sorted(src.rglob("*")):
        if f.is_file():
            target = dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            n += 1
    return n


def archive_files(archive: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, from the folder layout Study/Series/SOP.dcm."""
    return {p.stem: p for p in archive.glob("*/*/*.dcm")}


def check_archive_layout(archive: Path, drop: Drop) -> None:
    found = archive_files(archive)
    assert set(found) == set(drop.originals), (
        f"archive holds {len(found)} instances, expected {len(drop.originals)}"
    )
    for sop, path in found.items():
        assert path.read_bytes() == drop.originals[sop], f"{sop} differs from the original"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.parent.name == ds.SeriesInstanceUID
        assert path.parent.parent.name == ds.StudyInstanceUID
