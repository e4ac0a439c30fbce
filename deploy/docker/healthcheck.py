"""Container health check of the hub image (standard library only, so it stays cheap).

``api``: GET /readyz on the API port answers 200 (the API is up; its database, object store
and Redis answer).
``worker``: the database answers (a worker cannot claim jobs without it), and, when the worker
exposes its metrics port (9464), that answers too.
Exit 0 healthy, 1 not, with the reason on stderr (docker inspect shows it).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

METRICS_PORT = 9464


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 (a fixed local URL)
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")


def check_api() -> None:
    port = int(os.environ.get("RELAYPACS_HUB_PORT", "8080"))
    scheme = "https" if os.environ.get("RELAYPACS_HUB_TLS_CERTFILE") else "http"
    if scheme == "https":
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # our own listener on the loopback
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=4, context=ctx):
            return
    _get(f"{scheme}://127.0.0.1:{port}/readyz")


def check_worker() -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from relaypacs_hub.config import HubSettings

    async def ping() -> None:
        engine = create_async_engine(HubSettings().resolved_database_url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    asyncio.run(asyncio.wait_for(ping(), timeout=4))
    with socket.socket() as s:
        s.settimeout(1)
        listening = s.connect_ex(("127.0.0.1", METRICS_PORT)) == 0
    if listening:
        _get(f"http://127.0.0.1:{METRICS_PORT}/metrics")


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "api"
    try:
        check_worker() if mode == "worker" else check_api()
    except Exception as exc:  # any failure is "unhealthy", with its reason
        print(f"unhealthy ({mode}): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
