"""Raw-socket clients for the connection attack tests (hub and agent LAN app alike)."""

from __future__ import annotations

import socket


def idle_socket(port: int, path: str) -> socket.socket:
    """A connection that sends a request head without its blank line, and then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
    return s


def send_until_closed(port: int, head: bytes, timeout: float = 10) -> bytes:
    """Send ``head`` (a request head and maybe part of a body), read until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(4096):  # the server closes the connection: recv answers b""
            answer += chunk
        return answer
    finally:
        s.close()


STALLED_LOGIN = (
    b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 100\r\n\r\n{"username":'
)
HUGE_LOGIN = (
    b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 209715200\r\n\r\n"
)
