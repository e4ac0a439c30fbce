"""Errors to answers, in one place: every ``RelayError`` a route lets through is answered from
``relaypacs_shared.wire.PROBLEMS`` (status, stable code, plain detail; a service's ``Coded`` error
brings its own code), with the tus headers on the upload endpoint. Routes and services raise;
they do not build error answers.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from relaypacs_hub import metrics
from relaypacs_hub.ratelimit import RateLimited
from relaypacs_hub.services.errors import Coded
from relaypacs_shared import tus
from relaypacs_shared.errors import RelayError, StorageError
from relaypacs_shared.wire import API_PREFIX, problem_of, problem_type

log = structlog.get_logger("relaypacs.hub")

TUS_PATH = f"{API_PREFIX}/uploads"


def _is_tus(request: Request) -> bool:
    path = request.url.path
    return path == TUS_PATH or path.startswith(TUS_PATH + "/")


async def relay_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RelayError)
    status, body = problem_of(exc)
    if isinstance(exc, Coded):
        body.code = exc.code
    if isinstance(exc, StorageError):
        metrics.dependency_error("object_store")
        log.error("storage_error", error=str(exc))
        body.detail = "the hub cannot store data right now"
    elif status >= 500:
        log.error("unexpected_relay_error", error_type=type(exc).__name__)
    headers = tus.error_headers(exc) if _is_tus(request) else {}
    row = problem_type(exc)
    if row is not None and row.retry_after is not None:
        headers["Retry-After"] = str(row.retry_after)
    return JSONResponse(body.model_dump(exclude_defaults=True), status_code=status, headers=headers)


async def rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    headers = tus.base_headers() if _is_tus(request) else {}
    headers["Retry-After"] = exc.retry_after_header
    return JSONResponse(exc.body, status_code=429, headers=headers)


async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """A request that does not fit its model: where and what, never the value that was sent
    (a password typed into the wrong field must not come back in the answer, nor reach a log)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    where = ", ".join(".".join(str(p) for p in e["loc"][1:] or e["loc"]) for e in errors[:5])
    return JSONResponse(
        {
            "code": "invalid_request",
            "message": f"the request is not valid: check {where}",
            "detail": errors,
        },
        status_code=422,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(RelayError, relay_error)
    app.add_exception_handler(RateLimited, rate_limited)
