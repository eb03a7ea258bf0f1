"""A real local Ray cluster (a head and a second node) inside a network namespace with only `lo` up.

`ray start` swaps a loopback node address for the host's routable one and binds several ports on it; in a
namespace whose only interface is `lo` it can only use 127.0.0.1. Everything that talks to the cluster (the
Tunehouse server, the SDK client, these helpers) runs in the same namespace: subprocesses through
`ip netns exec`, and this process's calling thread by joining the namespace with setns(2) while a test runs.

Teardown kills what was started, by pid: every process in the namespace (nothing else can be in it), SIGTERM
first, then SIGKILL. Never `ray stop`: it kills every Ray process on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import psutil

CLONE_NEWNET = 0x40000000
HEAD_START_S = 180.0  # measured ~20 s on an idle 2-core machine; generous for a loaded one
OBJECT_STORE_BYTES = 100_000_000  # near Ray's minimum: the tests move no objects


def netns_usable() -> str | None:
    """Why this machine cannot run the cluster tests, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"th-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[ray]')"
    return None


class NetNs:
    """A named network namespace with only the loopback interface up."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, timeout: float = 60) -> str:
        done = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout, check=True)
        return done.stdout

    def pids(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread (and what it starts) in the namespace; sockets it opens are the namespace's."""
        import fsspec.asyn

        # fsspec's shared IO thread keeps the namespace of the thread that starts it: start it here first,
        # so a client made inside does not leave the host's S3 clients dialling from this namespace.
        fsspec.asyn.get_loop()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace failed")
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the host namespace failed")
        finally:
            os.close(target)
            os.close(home)

    def listeners(self) -> list[str]:
        """Local addresses of every listening TCP and bound UDP socket in the namespace."""
        found = []
        for flags in ("-ltnH", "-lunH"):
            for line in self.run("ss", flags).splitlines():
                parts = line.split()
                if len(parts) >= 4:
                    found.append(parts[3])
        return found

    def interface_addresses(self) -> list[str]:
        out = self.run("ip", "-o", "addr", "show")
        return [line.split()[3].split("/")[0] for line in out.splitlines()]

    def delete(self) -> None:
        kill_all(self.pids())
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def is_loopback(addr: str) -> bool:
    """``127.0.0.1:8265``, ``[::ffff:127.0.0.1]:6379``, ``[::1]:53`` -> True; a wildcard or other -> False."""
    host = addr.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host in ("*", "0.0.0.0", "::"):
        return False
    ip = ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def kill_all(pids: set[int], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after the grace period (Ray leaves some alive on SIGTERM)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def free_port_in(ns: NetNs) -> int:
    """An ephemeral port (above Ray's worker range 10002-19999) free inside the namespace."""
    with ns.entered(), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayNode:
    name: str
    pids: set[int]  # the daemons its `ray start` left running

    def kill(self) -> None:
        """As if its machine died: SIGKILL to its daemons and everything they started."""
        procs = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                procs.extend([p, *p.children(recursive=True)])
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)


@dataclass
class RayCluster:
    ns: NetNs
    temp_dir: Path
    gcs_port: int
    dashboard_port: int = 8265
    nodes: dict[str, RayNode] = field(default_factory=dict)
    # What every node's daemons (and so its jobs) get in their environment: say, the storage credentials
    # a cluster's nodes carry themselves (never a job's runtime_env).
    node_env: dict[str, str] = field(default_factory=dict)

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, name: str, *args: str) -> RayNode:
        before = self.ns.pids()
        log = self.temp_dir.parent / f"ray-start-{name}.log"
        ray = str(Path(sys.executable).parent / "ray")
        with open(log, "ab") as out:
            done = subprocess.run(
                self.ns.argv(ray, "start", *args, "--disable-usage-stats"),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=HEAD_START_S,
                env={**os.environ, **self.node_env, "RAY_USAGE_STATS_ENABLED": "0"},
            )
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed: {log.read_text()[-3000:]}")
        # Its own daemons, not the workers the other nodes' raylets (already there) spawned meanwhile.
        new = self.ns.pids() - before
        node = RayNode(name, {pid for pid in new if _parent(pid) not in before})
        self.nodes[name] = node
        return node

    def start_head(self, cpus: int = 2) -> RayNode:
        return self._ray_start(
            "head",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--port={self.gcs_port}",
            f"--temp-dir={self.temp_dir}",
        )

    def add_node(self, name: str, cpus: int = 1) -> RayNode:
        """A second raylet on this machine, with a resource of its own name to be recognised by."""
        return self._ray_start(
            name,
            f"--address=127.0.0.1:{self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f'--resources={{"{name}": 1}}',
            f"--object-store-memory={OBJECT_STORE_BYTES}",
        )

    def wait_for_nodes(self, count: int, timeout: float = HEAD_START_S) -> None:
        from ray.util.state import list_nodes

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                # A dead node's details may be gone (after a kill): that must not hide the live ones.
                alive = list_nodes(
                    address=self.jobs_address,
                    filters=[("state", "=", "ALIVE")],
                    raise_on_missing_output=False,
                )
                if len(alive) >= count:
                    return
            time.sleep(0.5)
        raise AssertionError(f"the Ray cluster did not reach {count} live nodes")


@contextlib.contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """A fresh namespace for a Ray cluster; the caller starts the head and nodes. All gone afterwards."""
    ns = NetNs(f"th-ray-{uuid.uuid4().hex[:8]}")
    # Short: Ray's unix sockets live under it, and a socket path may not exceed 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="thray-", dir="/tmp"))
    try:
        yield RayCluster(ns=ns, temp_dir=tmp / "t", gcs_port=free_port_in(ns))
    finally:
        ns.delete()
        shutil.rmtree(tmp, ignore_errors=True)
