"""``relaypacs-dev``: developer tools, a thin typer layer over :mod:`relaypacs_dev.generate`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from relaypacs_dev.generate import GeneratedStudy, generate_study

app = typer.Typer(
    name="relaypacs-dev",
    help="RelayPACS developer tools: synthetic DICOM studies for tests and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
)


class ModalityOption(StrEnum):
    """Modalities the generator knows: CT Image (PS3.3 A.3) and MR Image (PS3.3 A.4)."""

    CT = "CT"
    MR = "MR"


Out = Annotated[Path, typer.Option("--out", help="Directory to write into (created if missing).")]
ModalityArg = Annotated[ModalityOption, typer.Option("--modality", help="CT or MR.")]
Instances = Annotated[
    int, typer.Option("--instances", min=1, help="Images per study, split evenly across series.")
]
Series = Annotated[int, typer.Option("--series", min=1, help="Series per study.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Same seed, same bytes.")]
Rows = Annotated[int, typer.Option("--rows", min=1, max=65535, help="Rows per image.")]
Columns = Annotated[int, typer.Option("--columns", min=1, max=65535, help="Columns per image.")]
Count = Annotated[int, typer.Option("--count", min=1, help="Number of studies.")]


@contextmanager
def _bad_parameter() -> Iterator[None]:
    """Show the generator's argument errors as usage errors (exit code 2), not tracebacks."""
    try:
        yield
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _summary(study: GeneratedStudy, seconds: float) -> str:
    count = len(study.files)
    return (
        f"{study.study_instance_uid}  {count} files  {study.total_bytes / 1e6:.2f} MB"
        f"  ({count / seconds:.0f} instances/s)"
    )


@app.command("gen-study")
def gen_study(
    out: Out,
    modality: ModalityArg = ModalityOption.CT,
    instances: Instances = 50,
    series: Series = 1,
    seed: Seed = 0,
    rows: Rows = 512,
    columns: Columns = 512,
) -> None:
    """Write one synthetic axial head study as DICOM Part 10 files.

    Files go to OUT/<series>/<instance>.dcm; prints the Study UID, file count and size.

    Example:

        relaypacs-dev gen-study --out /tmp/study --modality MR --instances 120 --series 4
    """
    started = time.perf_counter()
    with _bad_parameter():
        study = generate_study(
            out,
            modality=modality.value,
            instances=instances,
            series=series,
            seed=seed,
            rows=rows,
            columns=columns,
        )
    typer.echo(_summary(study, time.perf_counter() - started))


@app.command("gen-studies")
def gen_studies(
    out: Out,
    count: Count = 10,
    modality: ModalityArg = ModalityOption.CT,
    instances: Instances = 50,
    series: Series = 1,
    seed: Seed = 0,
    rows: Rows = 512,
    columns: Columns = 512,
) -> None:
    """Write COUNT studies, seeds SEED to SEED+COUNT-1, into OUT/study-<seed>/.

    Each study has its own patient, UIDs and noise; prints a line per study, then totals.

    Example:

        relaypacs-dev gen-studies --out /tmp/studies --count 20 --instances 200
    """
    started = time.perf_counter()
    files = 0
    total = 0
    for study_seed in range(seed, seed + count):
        one_started = time.perf_counter()
        with _bad_parameter():
            study = generate_study(
                out / f"study-{study_seed:04d}",
                modality=modality.value,
                instances=instances,
                series=series,
                seed=study_seed,
                rows=rows,
                columns=columns,
            )
        typer.echo(_summary(study, time.perf_counter() - one_started))
        files += len(study.files)
        total += study.total_bytes
    seconds = time.perf_counter() - started
    typer.echo(
        f"{count} studies  {files} files  {total / 1e6:.2f} MB  ({files / seconds:.0f} instances/s)"
    )
