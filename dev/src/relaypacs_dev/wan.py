"""WAN kit: two network namespaces joined by a veth pair, with a bad link between them.

The agent runs in the edge namespace, the hub in the central one; every byte between them crosses
the veth pair, where this kit shapes it:

- rate: ``tc tbf`` on both ends (``tc netem`` is not in this kernel);
- loss: an nftables ``netdev`` ingress chain with ``numgen random mod 100 < N drop``;
- outages: ``ip link set ... down`` / ``up`` on a schedule;
- connection resets: a short-lived nftables rule answering TCP with RST, on a schedule.

Needs root, iproute2 and nftables. Names carry a random suffix so parallel runs never clash, and
``close()`` (also on exit) removes the namespaces, which takes the veth pair and rules with them.
Addresses are private ones inside namespaces this kit made; nothing leaves the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def wan_available() -> str | None:
    """None if the kit can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the WAN kit needs root (network namespaces)"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2 / nftables)"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


@dataclass
class LinkProfile:
    rate_mbit: float | None = None
    loss_pct: float = 0.0
    loss_direction: str = "both"  # both | up (edge -> hub only)
    outage_every_s: float | None = None
    outage_for_s: float = 0.0
    reset_every_s: float | None = None

    def describe(self) -> str:
        parts = []
        if self.rate_mbit:
            parts.append(f"{self.rate_mbit:g} Mbit/s")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% loss ({self.loss_direction})")
        if self.outage_every_s:
            parts.append(f"{self.outage_for_s:g}s outage every {self.outage_every_s:g}s")
        if self.reset_every_s:
            parts.append(f"resets every {self.reset_every_s:g}s")
        return ", ".join(parts) or "clean"


@dataclass
class WanLink:
    profile: LinkProfile = field(default_factory=LinkProfile)
    tag: str = field(default_factory=lambda: f"{random.randrange(16**5):05x}")  # noqa: S311

    def __post_init__(self) -> None:
        self.edge_ns = f"rpe{self.tag}"
        self.hub_ns = f"rph{self.tag}"
        self.edge_if = f"rpe{self.tag}v"
        self.hub_if = f"rph{self.tag}v"
        subnet = random.randrange(1, 250)  # noqa: S311
        self.edge_ip = f"10.201.{subnet}.1"
        self.hub_ip = f"10.201.{subnet}.2"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.outages = 0
        self.resets = 0
        self._up = False

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> WanLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        reason = wan_available()
        if reason:
            raise RuntimeError(reason)
        atexit.register(self.close)
        _run("ip", "netns", "add", self.edge_ns)
        _run("ip", "netns", "add", self.hub_ns)
        self._up = True
        _run("ip", "link", "add", self.edge_if, "type", "veth", "peer", "name", self.hub_if)
        _run("ip", "link", "set", self.edge_if, "netns", self.edge_ns)
        _run("ip", "link", "set", self.hub_if, "netns", self.hub_ns)
        for ns, ifname, ip in (
            (self.edge_ns, self.edge_if, self.edge_ip),
            (self.hub_ns, self.hub_if, self.hub_ip),
        ):
            self.ns(ns, "ip", "addr", "add", f"{ip}/30", "dev", ifname)
            self.ns(ns, "ip", "link", "set", ifname, "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")
        # Static neighbours: the loss rules drop every frame, ARP included, and a WAN's loss is
        # not on the hop's neighbour discovery (with ARP lost, new connections fail at once with
        # "no route to host" instead of meeting the lossy link).
        for ns, ifname, peer_ns, peer_if, peer_ip in (
            (self.edge_ns, self.edge_if, self.hub_ns, self.hub_if, self.hub_ip),
            (self.hub_ns, self.hub_if, self.edge_ns, self.edge_if, self.edge_ip),
        ):
            mac = self.ns(peer_ns, "cat", f"/sys/class/net/{peer_if}/address").stdout.strip()
            self.ns(ns, "ip", "neigh", "replace", peer_ip, "lladdr", mac, "dev", ifname,
                    "nud", "permanent")  # fmt: skip
        self.apply(self.profile)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        self._threads.clear()
        if self._up:
            for ns in (self.edge_ns, self.hub_ns):
                _run("ip", "netns", "del", ns, check=False)
            self._up = False

    # -- shaping --------------------------------------------------------------------------

    def ns(
        self, namespace: str, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", namespace, *argv, check=check)

    def wrap(self, side: str, argv: Sequence[str]) -> list[str]:
        """Prefix a command so it runs inside the edge or hub namespace."""
        namespace = self.edge_ns if side == "edge" else self.hub_ns
        return ["ip", "netns", "exec", namespace, *argv]

    def apply(self, profile: LinkProfile) -> None:
        self.profile = profile
        for ns, ifname in ((self.edge_ns, self.edge_if), (self.hub_ns, self.hub_if)):
            self.ns(ns, "tc", "qdisc", "del", "dev", ifname, "root", check=False)
            if profile.rate_mbit:
                rate_bits = profile.rate_mbit * 1e6
                burst = max(int(rate_bits / 8 / 250), 16 * 1024)
                self.ns(
                    ns, "tc", "qdisc", "add", "dev", ifname, "root", "tbf",
                    "rate", f"{int(rate_bits)}bit", "burst", str(burst), "latency", "200ms",
                )  # fmt: skip
        self._loss_rules(profile)
        if profile.outage_every_s and profile.outage_for_s > 0:
            self._spawn(self._outages, profile.outage_every_s, profile.outage_for_s)
        if profile.reset_every_s:
            self._spawn(self._resets, profile.reset_every_s)

    def _loss_rules(self, profile: LinkProfile) -> None:
        sides = [(self.hub_ns, self.hub_if)]  # packets arriving at the hub: the upload path
        if profile.loss_direction == "both":
            sides.append((self.edge_ns, self.edge_if))
        for ns in (self.edge_ns, self.hub_ns):
            self.ns(ns, "nft", "delete", "table", "netdev", "rploss", check=False)
        if profile.loss_pct <= 0:
            return
        for ns, ifname in sides:
            rules = (
                "table netdev rploss {\n"
                "  chain ingress {\n"
                f'    type filter hook ingress device "{ifname}" priority 0; policy accept;\n'
                f"    numgen random mod 100 < {round(profile.loss_pct)} drop\n"
                "  }\n}\n"
            )
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=rules, text=True, check=True, capture_output=True, timeout=30,
            )  # fmt: skip

    def _spawn(self, target: object, *args: float) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _outages(self, every: float, duration: float) -> None:
        while not self._stop.wait(every - duration):
            self.ns(self.edge_ns, "ip", "link", "set", self.edge_if, "down", check=False)
            self.outages += 1
            self._stop.wait(duration)
            self.ns(self.edge_ns, "ip", "link", "set", self.edge_if, "up", check=False)

    def _resets(self, every: float) -> None:
        rules = (
            "table inet rpreset {\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    meta l4proto tcp reject with tcp reset\n  }\n}\n"
        )
        while not self._stop.wait(every):
            subprocess.run(
                ["ip", "netns", "exec", self.hub_ns, "nft", "-f", "-"],
                input=rules, text=True, check=False, capture_output=True, timeout=30,
            )  # fmt: skip
            self.resets += 1
            self._stop.wait(0.5)
            with contextlib.suppress(subprocess.SubprocessError):
                self.ns(self.hub_ns, "nft", "delete", "table", "inet", "rpreset", check=False)


def transfer_probe(link: WanLink, seconds: float = 3.0) -> float:
    """Measure the link's TCP throughput (bytes/s) with a tiny sender/receiver pair."""
    port = 5201
    server = subprocess.Popen(
        link.wrap("hub", ["python3", "-c", _SINK.format(ip=link.hub_ip, port=port)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    client = link.wrap(
        "edge", ["python3", "-c", _SOURCE.format(ip=link.hub_ip, port=port, seconds=seconds)]
    )
    subprocess.run(client, check=True, timeout=seconds + 60)
    out, _ = server.communicate(timeout=seconds + 60)
    return float(out.strip() or 0)


_SINK = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ip}", {port})); s.listen(1); c, _ = s.accept(); n = 0; t = None
while True:
    d = c.recv(65536)
    if not d: break
    t = t or time.monotonic(); n += len(d)
print(n / max(time.monotonic() - (t or time.monotonic()), 1e-6))
"""
_SOURCE = """
import socket, time
c = socket.create_connection(("{ip}", {port})); end = time.monotonic() + {seconds}
buf = b"x" * 65536
while time.monotonic() < end: c.sendall(buf)
c.close()
"""
