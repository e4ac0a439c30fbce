"""``relaypacs-hub``: run and maintain the RelayPACS hub."""

from __future__ import annotations

import asyncio
import signal

import typer
import uvicorn

from relaypacs_hub.config import HubSettings
from relaypacs_hub.logging import configure_logging

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


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
    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    # uvicorn re-raises the stop signal after its graceful shutdown; a stop we asked for is a
    # clean exit (status 0) for systemd and for `make demo`, so that re-raise lands on a no-op.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()


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


if __name__ == "__main__":
    app()
