"""A Web Push service a test runs itself (plain HTTP on loopback): it takes push requests as a
browser vendor's service would, checks the VAPID JWT (RFC 8292) against the key sent with it and
decrypts the aes128gcm payload (RFC 8188/8291) with the subscriber's keys, which it makes."""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Push:
    path: str
    headers: dict[str, str]
    claims: dict[str, Any]
    vapid_key: str
    payload: bytes


@dataclass
class PushService:
    """``subscription(name)`` gives what a browser's PushSubscription.toJSON() holds."""

    gone: set[str] = field(default_factory=set)  # paths answered 410 Gone
    received: list[Push] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._keys: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        self._event = threading.Condition()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                code = service._take(self.path, headers, body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscription(self, name: str) -> dict[str, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        self._keys[f"/push/{name}"] = (key, auth)
        public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {
            "endpoint": f"{self.origin}/push/{name}",
            "keys": {"p256dh": b64url(public), "auth": b64url(auth)},
        }

    def _take(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if path in self.gone:
            return 410
        try:
            scheme, _, params = headers.get("authorization", "").partition(" ")
            assert scheme.lower() == "vapid", f"Authorization scheme {scheme!r} is not vapid"
            parts = dict(p.strip().split("=", 1) for p in params.split(","))
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), unb64url(parts["k"])
            )
            claims = jwt.decode(
                parts["t"], public, algorithms=["ES256"], audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )  # fmt: skip
            assert headers.get("content-encoding") == "aes128gcm"
            key, auth = self._keys[path]
            payload = http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm")
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return 400
        with self._event:
            self.received.append(Push(path, headers, claims, parts["k"], payload))
            self._event.notify_all()
        return 201

    def wait(self, count: int, timeout: float = 20) -> list[Push]:
        with self._event:
            self._event.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
