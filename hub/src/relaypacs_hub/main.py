"""The hub's FastAPI application, built from settings by ``create_app`` (no module globals)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from relaypacs_hub import metrics
from relaypacs_hub.api import problems
from relaypacs_hub.api.routes import (
    analytics,
    claims,
    dashboard,
    health,
    jobs,
    manifests,
    overview,
    reports,
    rules,
    studies,
    users,
)
from relaypacs_hub.api.routes import auth as auth_routes
from relaypacs_hub.api.routes import destinations as destination_routes
from relaypacs_hub.api.routes import devices as device_routes
from relaypacs_hub.api.routes import tus as tus_routes
from relaypacs_hub.auth.service import AuthService
from relaypacs_hub.auth.tokens import TokenIssuer, check_key_setting, load_private_key
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.migrate import upgrade
from relaypacs_hub.db.session import DATABASE_ERRORS, make_engine, make_sessionmaker
from relaypacs_hub.forwarding.base import Destination
from relaypacs_hub.forwarding.registry import build_destination
from relaypacs_hub.forwarding.runtime import load_destination_configs, start_delivery
from relaypacs_hub.forwarding.worker import ForwardingWorker
from relaypacs_hub.ingest.tus import TusService
from relaypacs_hub.metrics import CountRequests
from relaypacs_hub.ratelimit import build_limiter
from relaypacs_hub.reports.hl7 import MllpServer
from relaypacs_hub.reports.poller import ReportPoller
from relaypacs_hub.reports.push import PushSender
from relaypacs_hub.reports.service import FeedSignal
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.serving import body_limit
from relaypacs_hub.storage.factory import build_object_store, build_upload_store
from relaypacs_shared.httpguard import BodyLimit, SecurityHeaders
from relaypacs_shared.wire import API_PREFIX

log = structlog.get_logger("relaypacs.hub")


def build_destinations(settings: HubSettings) -> dict[str, Destination]:
    return {c.name: build_destination(c) for c in load_destination_configs(settings)}


async def _expire_uploads(tus: TusService, stop: asyncio.Event, every: float = 300.0) -> None:
    """Remove unfinished uploads past their expiry, now and then."""
    while not stop.is_set():
        try:
            await tus.expire()
        except Exception:
            log.exception("upload_expiry_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


def create_app(settings: HubSettings | None = None, *, migrate: bool = True) -> FastAPI:
    settings = settings or HubSettings()
    check_key_setting(settings)  # production refuses to start without a signing key file
    # Parse destinations now, so a bad file fails at start with its error, not at first commit.
    destination_configs = load_destination_configs(settings)
    destinations = {c.name: build_destination(c) for c in destination_configs}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        if migrate:
            await anyio.to_thread.run_sync(upgrade, url)
        engine = make_engine(url)
        sessionmaker = make_sessionmaker(engine)
        store = build_object_store(settings)
        signing_key = await anyio.to_thread.run_sync(load_private_key, settings)
        limiter = build_limiter(settings.redis_url, settings.redis_key_prefix)
        auth = AuthService(settings, sessionmaker, TokenIssuer(signing_key, settings), limiter)
        tus = TusService(
            sessionmaker,
            build_upload_store(settings),
            max_size=settings.upload_max_bytes,
            expiry_seconds=settings.upload_expiry_seconds,
        )
        stop = asyncio.Event()
        worker_task: asyncio.Task[None] | None = None
        worker: ForwardingWorker | None = None
        try:
            delivery = await start_delivery(
                settings, sessionmaker, store, destination_configs, destinations
            )
        except BaseException:
            await engine.dispose()  # a bad rules file stops the start cleanly
            raise
        if settings.worker_enabled and destinations:
            worker = ForwardingWorker(
                settings, sessionmaker, store, destinations, limits=delivery.limits
            )
            delivery.wake_worker.append(worker.wake)
            worker_task = asyncio.create_task(worker.run(stop))
        feed = FeedSignal()
        push = await anyio.to_thread.run_sync(PushSender, settings, sessionmaker)
        feed.listeners.append(push.on_report)
        app.state.hub = HubRuntime(
            settings=settings,
            sessionmaker=sessionmaker,
            store=store,
            delivery=delivery,
            tus=tus,
            auth=auth,
            limiter=limiter,
            reports=feed,
            push=push,
        )
        poller_task: asyncio.Task[None] | None = None
        if settings.report_poll_enabled:
            poller = ReportPoller(settings, sessionmaker, store, destinations, feed)
            poller_task = asyncio.create_task(poller.run(stop))
        mllp: MllpServer | None = None
        if settings.hl7_port is not None:
            mllp = MllpServer(sessionmaker, feed, settings.hl7_host, settings.hl7_port)
            await mllp.start()
        log.info(
            "hub_started",
            database=engine.dialect.name,
            destinations=sorted(destinations),
            worker=worker is not None,
        )
        janitor = asyncio.create_task(_expire_uploads(tus, stop))
        try:
            yield
        finally:
            stop.set()
            # Let the janitor finish its database call: cancelling it mid-query would leave
            # the SQLite driver's thread answering a closed event loop.
            try:
                await asyncio.wait_for(janitor, timeout=10)
            except TimeoutError:
                janitor.cancel()
            if worker_task is not None:
                try:
                    await asyncio.wait_for(worker_task, timeout=30)
                except TimeoutError:
                    worker_task.cancel()
            if mllp is not None:
                await mllp.stop()
            await push.drain()
            if poller_task is not None:
                try:
                    await asyncio.wait_for(poller_task, timeout=30)
                except TimeoutError:
                    poller_task.cancel()
            for dest in destinations.values():
                await dest.aclose()
            await limiter.aclose()
            await engine.dispose()
            log.info("hub_stopped")

    # The interactive API pages load their scripts from a CDN: development only (the API
    # reference is docs/api.md, and /openapi.json stays).
    production = settings.environment == "production"
    app = FastAPI(
        title="RelayPACS hub",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None if production else "/docs",
        redoc_url=None if production else "/redoc",
    )

    @app.exception_handler(HTTPException)
    async def _problem_handler(_request: Request, exc: HTTPException) -> JSONResponse:
        body = (
            exc.detail if isinstance(exc.detail, dict) else {"code": "error", "detail": exc.detail}
        )
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    problems.install(app)  # RelayError -> answer, from relaypacs_shared.wire.PROBLEMS

    async def _database_handler(_request: Request, exc: Exception) -> JSONResponse:
        metrics.dependency_error("database")
        log.error("database_unavailable", error_type=type(exc).__name__, error=str(exc)[:300])
        return JSONResponse(
            {"code": "database_unavailable", "detail": "the hub cannot reach its database"},
            status_code=503,
            headers={"Retry-After": "10"},
        )

    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database_handler)
    app.add_middleware(CountRequests)
    app.add_middleware(
        SecurityHeaders, hsts=settings.tls_certfile is not None, api_prefix=API_PREFIX + "/"
    )

    @app.exception_handler(Exception)
    async def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected_error", error_type=type(exc).__name__)
        return JSONResponse(
            {"code": "internal_error", "detail": "unexpected hub error; retry the request"},
            status_code=500,
        )

    # 413 before a body larger than its route accepts is read into memory.
    app.add_middleware(BodyLimit, limit_for=body_limit(settings))
    app.include_router(health.router)
    app.include_router(auth_routes.router)
    app.include_router(users.router)
    app.include_router(overview.router)
    app.include_router(analytics.router)
    app.include_router(studies.router)
    app.include_router(claims.router)
    app.include_router(manifests.router)
    app.include_router(tus_routes.router)
    app.include_router(jobs.router)
    app.include_router(rules.router)
    app.include_router(destination_routes.router)
    app.include_router(device_routes.router)
    app.include_router(dashboard.router)
    app.include_router(reports.router)
    return app
