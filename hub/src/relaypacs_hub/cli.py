"""``relaypacs-hub``: run and maintain the RelayPACS hub."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import structlog
import typer

from relaypacs_hub.config import HubSettings
from relaypacs_hub.logging import configure_logging
from relaypacs_shared.audit import ChainedRecord
from relaypacs_shared.private import private_files, private_umask

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


@app.callback()
def _private() -> None:
    # Staging, objects and keys the hub writes are for this user only (serve, worker, ...).
    private_umask()


def _hub_folders(settings: HubSettings) -> list[Path]:
    """What an earlier start under a looser umask may have left readable to others."""
    data = settings.data_dir
    return [
        data,
        data / "hub.db",
        settings.resolved_upload_dir,
        settings.resolved_object_store_dir,
    ]


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Listen address (default: RELAYPACS_HUB_HOST)."),
    port: int | None = typer.Option(None, help="Listen port (default: RELAYPACS_HUB_PORT)."),
) -> None:
    """Run the hub API (and, unless disabled, a forwarding worker) in the foreground.

    Migrations are applied first. Settings come from RELAYPACS_HUB_* variables.

    Example:

        RELAYPACS_HUB_DESTINATIONS_FILE=destinations.toml relaypacs-hub serve --port 8080
    """
    from relaypacs_hub.main import create_app

    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    private_files(_hub_folders(settings))
    listen = host or settings.host
    try:
        settings.check_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from exc
    from relaypacs_hub.serving import HubServer, uvicorn_config

    config = uvicorn_config(create_app(settings), settings, listen, port or settings.port)
    # uvicorn re-raises the stop signal after its graceful shutdown; a stop we asked for is a
    # clean exit (status 0) for systemd and for `make demo`, so that re-raise lands on a no-op.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    HubServer(config).run()


@app.command()
def migrate() -> None:
    """Apply the database migrations and exit.

    Example:

        RELAYPACS_HUB_DATABASE_URL=postgresql+asyncpg://relay@db/relaypacs relaypacs-hub migrate
    """
    from relaypacs_hub.db.migrate import upgrade

    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    upgrade(settings.resolved_database_url)
    typer.echo(f"database at head: {settings.resolved_database_url.split('@')[-1]}")


@app.command()
def worker() -> None:
    """Run only a forwarding worker (scale out by starting more of them on the same database).

    Example:

        RELAYPACS_HUB_DATABASE_URL=postgresql+asyncpg://relay@db/relaypacs relaypacs-hub worker
    """
    from relaypacs_hub.db.session import make_engine, make_sessionmaker
    from relaypacs_hub.forwarding.registry import build_destination
    from relaypacs_hub.forwarding.runtime import load_destination_configs
    from relaypacs_hub.forwarding.worker import ForwardingWorker
    from relaypacs_hub.storage.factory import build_object_store

    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    private_files(_hub_folders(settings))

    async def _main() -> None:
        configs = load_destination_configs(settings)
        destinations = {c.name: build_destination(c) for c in configs}
        if not destinations:
            raise typer.BadParameter("no destinations configured (RELAYPACS_HUB_DESTINATIONS_FILE)")
        engine = make_engine(settings.resolved_database_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if settings.worker_metrics_port:
            # This worker's own counters (deliveries, time to PACS) for Prometheus.
            from prometheus_client import start_http_server

            log = structlog.get_logger("relaypacs.hub")
            try:
                start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
            except OSError as exc:
                # Deliveries matter more than their counters: keep forwarding, say why the
                # metrics are missing (Prometheus shows the target down).
                log.error(
                    "worker_metrics_unavailable",
                    host=settings.worker_metrics_host,
                    port=settings.worker_metrics_port,
                    reason=exc.strerror or str(exc),
                    hint="another process holds the port: set RELAYPACS_HUB_WORKER_METRICS_PORT "
                    "to a free port, or 0 for none",
                )
            else:
                log.info(
                    "worker_metrics_listening",
                    host=settings.worker_metrics_host,
                    port=settings.worker_metrics_port,
                )
        w = ForwardingWorker(
            settings,
            make_sessionmaker(engine),
            build_object_store(settings),
            destinations,
            limits={c.name: c.max_concurrent_jobs for c in configs},
        )
        try:
            await w.run(stop)
        finally:
            for d in destinations.values():
                await d.aclose()
            await engine.dispose()

    asyncio.run(_main())


@app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(help="Login name of the new admin.")],
    facility: Annotated[
        list[str] | None, typer.Option(help="A facility the admin belongs to (repeatable).")
    ] = None,
) -> None:
    """Create a user with role admin (the first one, or one more). Migrations are applied first.

    The password comes from RELAYPACS_HUB_BOOTSTRAP_PASSWORD, else it is prompted for.

    Example:

        relaypacs-hub create-admin --username alice
    """
    from relaypacs_hub.auth.service import AuthError, AuthService
    from relaypacs_hub.auth.tokens import TokenIssuer, load_private_key
    from relaypacs_hub.db.migrate import upgrade
    from relaypacs_hub.db.session import make_engine, make_sessionmaker

    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    if settings.bootstrap_password is not None:
        password = settings.bootstrap_password.get_secret_value()
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise typer.BadParameter("the password must have at least 12 characters")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)

    async def _main() -> None:
        engine = make_engine(settings.resolved_database_url)
        issuer = TokenIssuer(load_private_key(settings), settings)
        try:
            service = AuthService(settings, make_sessionmaker(engine), issuer)
            await service.create_user("cli", username, password, "admin", facility or [])
        finally:
            await engine.dispose()

    try:
        asyncio.run(_main())
    except AuthError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--username") from exc
    typer.echo(f"admin {username} created")


@app.command("enrollment-code")
def enrollment_code(
    facility: Annotated[str, typer.Option(help="The facility the enrolled agent will act for.")],
    ttl_minutes: Annotated[
        float, typer.Option(help="Minutes the code stays valid.", min=1, max=60 * 24 * 30)
    ] = 60.0,
) -> None:
    """Print a one-time code an agent exchanges for its device credential
    (``relaypacs-agent enroll``); the same as ``POST /api/v1/devices/enrollment-codes`` for
    whoever can run the hub's commands. Migrations are applied first. The issue is audited.

    Example:

        relaypacs-agent enroll --hub-url https://hub.example.org \\
            --code "$(relaypacs-hub enrollment-code --facility clinic-a)"
    """
    from relaypacs_hub.auth import devices
    from relaypacs_hub.db.migrate import upgrade
    from relaypacs_hub.db.session import make_engine, make_sessionmaker

    settings = HubSettings()
    configure_logging(settings.log_level, settings.log_json)
    if not facility.strip() or len(facility) > 64:
        raise typer.BadParameter("a facility name of 1 to 64 characters", param_hint="--facility")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)

    async def _main() -> str:
        engine = make_engine(settings.resolved_database_url)
        try:
            code, _expires = await devices.issue_code(
                make_sessionmaker(engine), "cli", facility, ttl_minutes, "cli"
            )
            return code
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(_main()))


audit_app = typer.Typer(help="Check and export the hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _audit_records(settings: HubSettings) -> list[ChainedRecord]:
    from relaypacs_hub.audit import read_log
    from relaypacs_hub.db.session import make_engine, make_sessionmaker

    async def _main() -> list[ChainedRecord]:
        engine = make_engine(settings.resolved_database_url)
        try:
            return [r async for r in read_log(make_sessionmaker(engine))]
        finally:
            await engine.dispose()

    return asyncio.run(_main())


@audit_app.command("verify")
def audit_verify(
    anchor: str | None = typer.Option(
        None, help="SEQ:HASH printed by an earlier verify: also detects a truncated log."
    ),
) -> None:
    """Check the audit log's hash chain; exit 1 listing each edited, inserted or deleted record.

    Example:

        relaypacs-hub audit verify --anchor "$(cat /secure/audit-anchor)"
    """
    from relaypacs_shared.audit import verify_report

    problems, summary = verify_report(_audit_records(HubSettings()), anchor)
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

        relaypacs-hub audit export --format atna > audit-2026-11.jsonl
    """
    from relaypacs_shared.audit import EXPORT_FORMATS, export_lines

    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter("--format is jsonl or atna")
    for line in export_lines(_audit_records(HubSettings()), fmt, "relaypacs-hub"):
        typer.echo(line)


if __name__ == "__main__":
    app()
