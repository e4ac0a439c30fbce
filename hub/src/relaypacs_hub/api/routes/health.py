from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from relaypacs_hub import metrics
from relaypacs_hub.api.deps import Policy, Principal, PublicAccess, State, bearer_matches
from relaypacs_hub.services.health import ping_database
from relaypacs_shared.netpolicy import is_loopback_host

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(_auth: PublicAccess) -> dict[str, str]:
    """Liveness: the process answers HTTP (the agent's link check, a liveness probe). It asks no
    dependency, so a database outage does not get every replica restarted; whether the hub can
    take work is `/readyz`."""
    return {"status": "ok"}


async def _check(name: str, probe: Callable[[], Awaitable[Any]], limit: float) -> str:
    try:
        await asyncio.wait_for(probe(), timeout=limit)
    except TimeoutError:
        metrics.dependency_error(name)
        return f"failed: no answer within {limit:g} s"
    except Exception as exc:
        metrics.dependency_error(name)
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


@router.get(
    "/readyz",
    responses={503: {"description": "A dependency failed; `checks` says which and why."}},
)
async def readyz(state: State, _auth: PublicAccess) -> JSONResponse:
    """Readiness: the database, the object store and (when configured) Redis each answer. 200
    when all do; 503 naming what failed, so a load balancer sends uploads elsewhere."""
    timeout = state.settings.readiness_timeout_seconds

    async def database() -> None:
        await ping_database(state.sessionmaker)

    async def object_store() -> None:
        await state.store.exists("readyz/probe")

    probes: dict[str, Callable[[], Awaitable[Any]]] = {
        "database": database,
        "object_store": object_store,
    }
    ping = getattr(state.limiter, "ping", None)
    if ping is not None:
        probes["redis"] = ping
    results = await asyncio.gather(*(_check(n, p, timeout) for n, p in probes.items()))
    checks = dict(zip(probes, results, strict=True))
    ready = all(r == "ok" for r in results)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Cache-Control": "no-store"},
    )


class MetricsPolicy(Policy):
    """Prometheus scrapes: from the loopback, or with ``RELAYPACS_HUB_METRICS_TOKEN``."""

    async def __call__(  # type: ignore[override]
        self,
        state: State,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Principal:
        token = state.settings.metrics_token
        if bearer_matches(authorization, token):
            return Principal("anonymous", "metrics")
        host = request.client.host if request.client else ""
        if is_loopback_host(host):
            return Principal("anonymous", "metrics")
        if token is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                {
                    "code": "forbidden",
                    "detail": "metrics answer only the loopback; set "
                    "RELAYPACS_HUB_METRICS_TOKEN to scrape from elsewhere",
                },
            )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            {"code": "unauthorized", "detail": "the metrics bearer token is required"},
            headers={"WWW-Authenticate": "Bearer"},
        )


METRICS = MetricsPolicy("loopback or metrics token")
MetricsAccess = Annotated[Principal, Depends(METRICS)]


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(state: State, _auth: MetricsAccess) -> Response:
    """Prometheus text: this process's counters and the state computed from the database now
    (docs/observability.md lists every metric)."""
    certificates = {}
    if state.settings.tls_certfile is not None:
        certificates["hub"] = state.settings.tls_certfile
    body = await metrics.render(state.sessionmaker, state.destination_names, certificates)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
