"""``relaypacs-agent``: take studies in at a facility and relay them to the hub."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.logging import configure_logging

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
quarantine_app = typer.Typer(
    help="Files the agent refused: list, show, release (re-validated) or delete them.",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


@app.callback()
def _private() -> None:
    # The catalogue (password hashes, TOTP secrets) and the images are for this user only.
    from relaypacs_shared.private import private_umask

    private_umask()


def shown(text: str | None) -> str:
    """Text from outside (a file name, an AE title) on one line of a terminal: newlines,
    escape sequences and other control characters written as escapes, never acted on."""
    if text is None:
        return "-"
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
def run() -> None:
    """Watch the folders, listen for C-STORE, and relay what arrives to the hub, until Ctrl-C
    or SIGTERM.

    Settings come from RELAYPACS_AGENT_* variables (see docs/configuration.md).

    Example:

        RELAYPACS_AGENT_INBOX=/srv/dicom-in RELAYPACS_AGENT_DIMSE_PORT=11112 relaypacs-agent run
    """
    from relaypacs_agent.runner import Agent

    settings = AgentSettings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        settings.check_hub_url()
    except ValueError as exc:
        typer.echo(f"relaypacs-agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    Agent(settings).run()


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show what the agent holds: instances, quarantine, disk, and the state of each study.

    Example:

        relaypacs-agent status --json
    """
    from relaypacs_agent.status import read_status

    settings = AgentSettings()
    data = read_status(settings.db_path, min_free_bytes=settings.min_free_bytes)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data["exists"]:
        typer.echo(f"no agent database at {data['database']} yet")
        return
    t = data["totals"]
    typer.echo(
        f"{t['instances']} instance(s) in {t['studies']} study(ies); "
        f"{t['duplicates']} duplicate(s); {t['quarantined']} quarantined"
    )
    disk = data.get("disk") or {}
    if disk:
        free, reserve = disk["free_bytes"] / 1e9, disk["reserve_bytes"] / 1e9
        line = f"disk: {free:.1f} GB free, {reserve:.1f} GB reserve"
        if disk["refusing"]:
            line += "  -- REFUSING NEW WORK: free some space"
        typer.echo(line)
    for s in data["studies"]:
        dests = ", ".join(f"{d['destination']}:{d['state']}" for d in s["destinations"]) or "-"
        follow = (
            f" (follow-up {s['commits']})" if s["commits"] and s["state"] == "receiving" else ""
        )
        tr = s.get("transfer")
        if tr and s["state"] == "receiving" and tr["bytes_to_send"]:
            eta = f", ETA {tr['eta_seconds']}s" if tr["eta_seconds"] is not None else ""
            follow += (
                f"  sending {tr['percent']:.0f}% of {tr['bytes_to_send'] / 1e6:.1f} MB"
                f" at {tr['rate_bytes_per_s'] * 8 / 1e6:.1f} Mbit/s{eta}"
            )
        typer.echo(
            f"  {s['study_instance_uid']}  {s['state']:<10} {s['service_level']:<7} "
            f"{s['instances']:>5} inst  {s['bytes'] / 1e6:8.1f} MB  {dests}{follow}"
            + (
                f"  last error: {s['last_error']}"
                if s["last_error"] and s["state"] == "receiving"
                else ""
            )
        )
    for reason, n in sorted(t["quarantine_reasons"].items()):
        typer.echo(f"  quarantine: {n} x {reason}")
    if t.get("conformance_findings"):
        typer.echo(f"  {t['conformance_findings']} instance(s) with dciodvfy findings (warnings)")


@app.command("import")
def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, help="A zip, a DICOMDIR folder, a folder or a file.")
    ],
    service_level: str = typer.Option("", help="routine or stat (default: the agent's)."),
    move: bool = typer.Option(False, "--move", help="Remove the originals once taken in."),
    send_now: bool = typer.Option(
        False, "--send-now", help="Send the studies without waiting for the quiet period."
    ),
) -> None:
    """Import a CD/USB export (DICOMDIR), a zip archive, a folder or a file, with progress.

    Originals are copied (a CD is read-only) unless --move. Files that are not DICOM (viewers,
    readmes) are skipped and listed; damaged DICOM files go to quarantine. Safe to run while
    the agent runs.

    Example:

        relaypacs-agent import /media/cdrom --send-now
    """
    from relaypacs_agent.ingest.pipeline import IngestResult, Source
    from relaypacs_agent.runner import build_importer, build_ingestor
    from relaypacs_agent.store.db import Store

    settings = AgentSettings()
    if service_level not in ("", "routine", "stat"):
        raise typer.BadParameter("routine or stat", param_hint="--service-level")
    store = Store(settings.db_path)
    ingestor = build_ingestor(settings, store)
    importer = build_importer(settings, ingestor)
    total = importer.count(path)
    studies: set[str] = set()
    started = time.monotonic()
    source = Source(kind="import", service_level=service_level or None, keep_original=not move)
    try:
        with typer.progressbar(length=total, label="importing", file=None) as bar:

            def progress(_p: Path, result: IngestResult | BaseException) -> None:
                if isinstance(result, IngestResult) and result.study_instance_uid:
                    studies.add(result.study_instance_uid)
                bar.update(1)

            summary = importer.import_path(path.resolve(), source, progress)
        if send_now and studies:
            store.mark_ready(sorted(studies))
    finally:
        store.close()
    elapsed = time.monotonic() - started
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items())) or "nothing"
    typer.echo(f"{summary.kind} {path}: {counts} in {elapsed:.1f} s; {len(studies)} study(ies)")
    if summary.refused:
        typer.echo(f"  refused whole and quarantined: {summary.refused}")
    if summary.skipped_count:
        shown = ", ".join(summary.skipped[:10])
        typer.echo(f"  skipped {summary.skipped_count} file(s) that are not DICOM: {shown}")
    if summary.missing:
        typer.echo(f"  the DICOMDIR lists {len(summary.missing)} file(s) not on the medium")
    for err in summary.errors[:10]:
        typer.echo(f"  error: {err}", err=True)
    if summary.errors or summary.refused:
        raise typer.Exit(1)


@app.command("send-now")
def send_now(
    study_uids: Annotated[
        list[str] | None,
        typer.Argument(help="StudyInstanceUIDs; none: every study being received."),
    ] = None,
) -> None:
    """Send studies now instead of waiting for their quiet period.

    Example:

        relaypacs-agent send-now 1.2.826.0.1.3680043.8.498.1
    """
    from relaypacs_agent.store.db import Store

    store = Store(AgentSettings().db_path)
    try:
        n = store.mark_ready(list(study_uids) if study_uids else None)
    finally:
        store.close()
    typer.echo(f"{n} study(ies) marked ready to send")
    if study_uids and n < len(study_uids):
        typer.echo("some studies are not being received (unknown, or sent already)", err=True)
        raise typer.Exit(1)


# -- enrollment -------------------------------------------------------------------------------


def _hub_post(settings: AgentSettings, url: str, path: str, **kwargs: Any) -> dict[str, Any]:
    import httpx

    from relaypacs_agent.uplink.client import hub_ssl_context

    try:
        settings.model_copy(update={"hub_url": url}).check_hub_url()
    except ValueError as exc:
        typer.echo(f"relaypacs-agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        r = httpx.post(
            url.rstrip("/") + path,
            timeout=30,
            verify=hub_ssl_context(settings.hub_ca_file),
            **kwargs,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"relaypacs-agent: hub unreachable: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        body: dict[str, Any] = r.json()
    except ValueError:
        body = {}
    if r.status_code >= 400:
        detail = body.get("detail", r.text[:200])
        typer.echo(f"relaypacs-agent: the hub refused ({r.status_code}): {detail}", err=True)
        raise typer.Exit(1)
    return body


@app.command()
def enroll(
    hub_url: Annotated[str, typer.Option("--hub-url", help="Base URL of the hub.")],
    code: Annotated[str, typer.Option("--code", help="One-time code from a hub admin.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Name of this agent at the hub (default: host).")
    ] = None,
) -> None:
    """Enroll this agent at the hub with a one-time code, and keep the device credential in
    data_dir/credential.json (mode 0600). The agent then authenticates with it instead of
    RELAYPACS_AGENT_HUB_TOKEN, and sends and reads only for the code's facility.

    Example:

        relaypacs-agent enroll --hub-url https://hub.example.org --code Xy12... --name ct-room-1
    """
    import socket

    from relaypacs_agent.uplink.credential import Credential, credential_path, write_credential

    settings = AgentSettings()
    body = _hub_post(
        settings,
        hub_url,
        "/api/v1/devices/enroll",
        json={"code": code, "name": name or socket.gethostname()},
    )
    path = credential_path(settings.data_dir)
    write_credential(path, Credential(hub_url, body["device_id"], body["facility"], body["secret"]))
    _audit_local("device.enrolled", body["device_id"], facility=body["facility"], hub=hub_url)
    typer.echo(f"enrolled as device {body['device_id']} of facility {body['facility']}")
    typer.echo(f"credential written to {path}")
    if hub_url.rstrip("/") != settings.hub_url.rstrip("/"):
        typer.echo(f"set RELAYPACS_AGENT_HUB_URL={hub_url} for `relaypacs-agent run`", err=True)


@app.command("renew-credential")
def renew_credential() -> None:
    """Exchange the device credential for a new secret; the old one stops working at once (a
    running agent picks up the new one by itself).

    Example:

        RELAYPACS_AGENT_DATA_DIR=/var/lib/relaypacs relaypacs-agent renew-credential
    """
    from relaypacs_agent.uplink.credential import (
        Credential,
        credential_path,
        load_credential,
        write_credential,
    )

    settings = AgentSettings()
    path = credential_path(settings.data_dir)
    cred = load_credential(path)
    if cred is None:
        typer.echo(f"relaypacs-agent: no credential at {path}: enroll first", err=True)
        raise typer.Exit(2)
    url = cred.hub_url or settings.hub_url
    body = _hub_post(
        settings,
        url,
        "/api/v1/devices/renew",
        headers={"Authorization": f"Bearer {cred.bearer}"},
    )
    write_credential(path, Credential(url, cred.device_id, cred.facility, body["secret"]))
    _audit_local("device.credential_renewed", cred.device_id, facility=cred.facility)
    typer.echo(f"credential of device {cred.device_id} renewed")


def _audit_local(action: str, target: str, **details: Any) -> None:
    """Record a change of this agent's identity in its own hash-chained audit log."""
    import getpass

    from relaypacs_agent.store.audit import audit
    from relaypacs_agent.store.db import Store

    settings = AgentSettings()
    store = Store(settings.db_path)
    try:
        audit(store, f"cli:{getpass.getuser()}", action, target, **details)
    finally:
        store.close()


# -- quarantine -------------------------------------------------------------------------------


def _ingestor() -> Any:
    from relaypacs_agent.runner import build_ingestor
    from relaypacs_agent.store.db import Store

    settings = AgentSettings()
    return build_ingestor(settings, Store(settings.db_path))


@quarantine_app.command("list")
def quarantine_list(
    show_all: bool = typer.Option(False, "--all", help="Include released and deleted entries."),
    reason: str = typer.Option("", help="Only this reason code."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List quarantined files with the reason in plain words.

    Example:

        relaypacs-agent quarantine list --reason conflict
    """
    from relaypacs_agent.ingest.quarantine import entry_dict

    ing = _ingestor()
    rows = [
        entry_dict(r)
        for r in ing.store.quarantine_entries(include_resolved=show_all, reason=reason or None)
    ]
    ing.store.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("quarantine is empty")
        return
    for r in rows:
        state = f" [{r['resolution']}]" if r["resolution"] else ""
        typer.echo(
            f"{r['id']:>5}  {_when(r['quarantined_at'])}  {shown(r['reason']):<22} "
            f"{r['size']:>11} B  {shown(r['original_name'])}  ({shown(r['source'])}): "
            f"{shown(r['explanation'])}{state}"
        )


@quarantine_app.command("show")
def quarantine_show(
    entry_id: int = typer.Argument(..., help="Entry id from `quarantine list`."),
) -> None:
    """Show one quarantined file: why, where it is, and what its header says (UIDs only).

    Example:

        relaypacs-agent quarantine show 12
    """
    from relaypacs_agent.ingest.quarantine import entry_dict, sidecar
    from relaypacs_shared.dicom import validate_file
    from relaypacs_shared.errors import DicomValidationError

    ing = _ingestor()
    row = ing.store.quarantine_entry(entry_id)
    ing.store.close()
    if row is None:
        typer.echo(f"no quarantine entry {entry_id}", err=True)
        raise typer.Exit(1)
    d = entry_dict(row)
    keys = ["id", "reason", "explanation", "message", "original_name", "source", "size"]
    keys += ["sha256", "sop_instance_uid", "path", "exists", "resolution", "resolution_note"]
    for key in keys:
        value = d.get(key)
        typer.echo(f"{key:>18}: {shown(value) if isinstance(value, str) else value}")
    typer.echo(f"{'quarantined at':>18}: {_when(d['quarantined_at'])}")
    if not sidecar(row):
        typer.echo(f"{'sidecar':>18}: missing")
    if d["exists"]:
        try:
            info = validate_file(Path(row["path"]))
            now = "passes validation now"
        except DicomValidationError as exc:
            info, now = None, f"still refused: {exc.reason}"
        typer.echo(f"{'validation':>18}: {now}")
        if info is not None:
            typer.echo(f"{'study':>18}: {info.study_instance_uid}")
            typer.echo(f"{'series':>18}: {info.series_instance_uid}")
            typer.echo(f"{'modality':>18}: {info.modality}")


@quarantine_app.command("release")
def quarantine_release(
    entry_id: int = typer.Argument(..., help="Entry id from `quarantine list`."),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="For a conflict: keep this version instead of the held one "
        "(the held one goes to quarantine).",
    ),
) -> None:
    """Release a quarantined file: it is validated again and, if it passes, taken in.

    Example:

        relaypacs-agent quarantine release 12 --replace
    """
    from relaypacs_agent.ingest.quarantine import ReleaseRefused, release

    ing = _ingestor()
    try:
        done = release(ing, entry_id, replace=replace)
    except ReleaseRefused as exc:
        typer.echo(f"not released: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        ing.store.close()
    typer.echo(f"released entry {entry_id}: {done.outcome} ({done.sop_instance_uid})")


@quarantine_app.command("delete")
def quarantine_delete(
    entry_id: int = typer.Argument(..., help="Entry id from `quarantine list`."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete a quarantined file for good (the entry is kept, marked deleted).

    Example:

        relaypacs-agent quarantine delete 12 --yes
    """
    from relaypacs_agent.ingest.quarantine import ReleaseRefused, delete

    if not yes:
        typer.confirm(f"delete quarantined file {entry_id} for good?", abort=True)
    ing = _ingestor()
    try:
        d = delete(ing, entry_id)
    except ReleaseRefused as exc:
        typer.echo(f"not deleted: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        ing.store.close()
    typer.echo(f"deleted entry {entry_id} ({d['original_name']})")


@app.command()
def wrapped(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List files that came without a DICOM file header and were given one.

    Old exports and some RT planning systems write bare datasets (no preamble, no 'DICM', no
    File Meta Information). The agent keeps their bytes as they came, behind a header naming
    their SOP Class and Instance and the transfer syntax it inferred; each is audited.

    Example:

        relaypacs-agent wrapped
    """
    from pydicom.uid import UID

    from relaypacs_agent.store.audit import wrapped_records
    from relaypacs_agent.store.db import Store

    settings = AgentSettings()
    store = Store(settings.db_path)
    records = wrapped_records(store)
    store.close()
    entries = [
        {"at": r.at, "sop_instance_uid": r.sop_instance_uid, "by": r.actor, **r.details}
        for r in records
    ]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        typer.echo("no file needed a DICOM header")
        return
    for e in entries:
        syntax = UID(e.get("transfer_syntax", "")).name or e.get("transfer_syntax", "?")
        typer.echo(
            f"{e['at'][:19]}Z  {shown(e['sop_instance_uid'])}  {syntax}  "
            f"({shown(e.get('came_from'))})  original sha256 {e.get('original_sha256', '?')[:16]}"
        )


audit_app = typer.Typer(help="Check and export the hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    anchor: str | None = typer.Option(
        None, help="SEQ:HASH printed by an earlier verify: also detects a truncated log."
    ),
) -> None:
    """Check the audit log's hash chain; exit 1 listing each edited, inserted or deleted record.

    Example:

        RELAYPACS_AGENT_DATA_DIR=/var/lib/relaypacs relaypacs-agent audit verify
    """
    from relaypacs_agent.store.audit import read_log
    from relaypacs_agent.store.db import Store
    from relaypacs_shared.audit import verify_report

    store = Store(AgentSettings().db_path)
    try:
        records = list(read_log(store))
    finally:
        store.close()
    problems, summary = verify_report(records, anchor)
    for line in problems:
        typer.echo(line, err=True)
    typer.echo(summary)
    if problems:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (records as stored) or atna."),
) -> None:
    """Write the audit log to stdout, one JSON object a line (``atna``: DICOM PS3.15 A.5 fields).

    Example:

        relaypacs-agent audit export --format atna > audit.jsonl
    """
    from relaypacs_agent.store.audit import read_log
    from relaypacs_agent.store.db import Store
    from relaypacs_shared.audit import EXPORT_FORMATS, export_lines

    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter("--format is jsonl or atna")
    store = Store(AgentSettings().db_path)
    try:
        for line in export_lines(read_log(store), fmt, "relaypacs-agent"):
            typer.echo(line)
    finally:
        store.close()


if __name__ == "__main__":
    app()
