"""Shared fixtures: the tiny model (built once), fresh PostgreSQL databases, live servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.s3server import BUCKET as S3_BUCKET
from tests.s3server import SeaweedS3

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules marked heavy first, the longest first; the rest in collection order after them. With
    `make test`'s workers (pytest-xdist, --dist loadfile --no-loadscope-reorder), the many short modules
    then fill the end of the run instead of one worker finishing a long module alone."""

    def minutes(item: pytest.Item) -> float:
        mark = item.get_closest_marker("heavy")
        return float(mark.args[0]) if mark is not None and mark.args else 0.0

    items.sort(key=lambda item: -minutes(item))  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunehouse.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tunehouse-tiny")


@pytest.fixture(scope="session")
def make_pg_database() -> Iterator[Callable[[], str]]:
    """Creates throwaway databases on the real server; all are dropped at the end of the session."""
    made: list[str] = []

    def make() -> str:
        name = f"tunehouse_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A real `tunehouse serve` process on its own home directory and database."""

    home: Path
    database_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    serve_args: list[str] = field(default_factory=list)  # e.g. --no-scheduler --workers 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TUNEHOUSE_HOME": str(self.home),
            "TUNEHOUSE_DATABASE_URL": self.database_url,
            "TUNEHOUSE_MAX_RUNNING": "2",
            "TUNEHOUSE_GPUS": "none",  # the same concurrency whether or not this machine has GPUs
            **self.extra_env,
        }

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "tunehouse", *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.stdout

    def keys(self, account: str) -> dict[str, str]:
        return dict(json.loads(self.cli("keys", "create", "--account", account, "--json")))

    def start(self) -> None:
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunehouse", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            + self.serve_args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def crash(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a real crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def kill_trainers(home: Path) -> None:
    """Trainers run in their own sessions and outlive the server by design; tests clean them up."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "tunehouse.trainer" in cmd and any(str(home) in c for c in cmd):
            p.kill()


def start_server(
    tmp: Path, backend: str, tiny_model: Path, make_pg: Callable[[], str], **env: str
) -> LiveServer:
    home = tmp / "home"
    (home / "models").mkdir(parents=True)
    # Reuse the session's tiny model instead of building it per server.
    shutil.copytree(tiny_model, home / "models" / "tunehouse-tiny")
    url = make_pg() if backend == "postgres" else f"sqlite:///{home / 'tunehouse.db'}"
    server = LiveServer(home=home, database_url=url, extra_env=env)
    server.start()
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real SeaweedFS S3 server for the session; each test works under a prefix of its own."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """This process reaches the server through the usual S3 environment variables, as Tunehouse does."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_root(s3_env: SeaweedS3) -> str:
    """A fresh s3:// storage root in the test bucket."""
    return f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:10]}"
