"""PostgreSQL restarting under load: the server reconnects by itself and no create it acknowledged is lost.

The database is a private PostgreSQL cluster of this test (initdb/pg_ctl as the postgres user), so
restarting it disturbs nobody else's; where that cannot be set up the test skips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, free_port
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

DEADLINE_S = 240


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"

    def pg_ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data),
             "-l", str(self.root / "log"), "-w", "-o", opts, *args],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    initdb = shutil.which("initdb")
    if initdb is None or shutil.which("runuser") is None:
        pytest.skip("no initdb/runuser to run a private PostgreSQL")
    # Under /tmp itself: the postgres user cannot enter pytest's private temporary directories.
    root = Path(tempfile.mkdtemp(prefix="tunehouse-pg-"))
    try:
        shutil.chown(root, "postgres")
        made = subprocess.run(
            ["runuser", "-u", "postgres", "--", initdb, "-D", str(root / "data"), "-A", "trust"],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            pytest.skip(f"cannot make a private PostgreSQL cluster: {made.stderr[-300:]}")
        pg = Cluster(root)
        pg.pg_ctl("start")
        yield pg
        pg.pg_ctl("-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_every_create_acknowledged_across_a_postgres_restart_is_kept(
    tmp_path: Path, cluster: Cluster
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = LiveServer(home=home, database_url=cluster.url, extra_env={"TUNEHOUSE_MAX_RUNNING": "0"})
    server.start()
    try:
        api_key = server.keys("load")["api_key"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)
        training = client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id
        acknowledged: list[str] = []
        refused: list[int] = []
        done = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}) as http:
                while not done.is_set():
                    try:
                        r = http.post(
                            "/v1/fine_tuning/jobs",
                            json={"model": "tunehouse-tiny", "training_file": training},
                            timeout=60,
                        )
                    except httpx.HTTPError:
                        refused.append(0)
                        continue
                    if r.status_code == 200:
                        acknowledged.append(r.json()["id"])
                    else:
                        refused.append(r.status_code)
                        time.sleep(0.05)  # a refused client backs off a little, as SDKs do

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            wait_for(lambda: len(acknowledged) >= 20, timeout=DEADLINE_S)
            cluster.pg_ctl("-m", "fast", "restart")
            after = len(acknowledged)
            wait_for(lambda: len(acknowledged) >= after + 20, timeout=DEADLINE_S)  # reconnected by itself
        finally:
            done.set()
            for w in workers:
                w.join(90)
        assert set(refused) <= {0, 500, 503}, refused
        kept = {j.id for j in client.fine_tuning.jobs.list(limit=100)}
        assert set(acknowledged) <= kept, f"lost: {set(acknowledged) - kept}"
    finally:
        server.stop()
