#!/usr/bin/env python3
"""Polling latency: the three status calls clients poll, over many jobs in PostgreSQL, at a fixed rate.

Seeds a throwaway PostgreSQL database (COPY: one job, one finished run and one checkpoint per job, all in
one account), starts a real `tunehouse serve --no-scheduler` on loopback, and drives each call open-loop at
--rate requests/s for at most --duration seconds and --max-requests requests:

  qianfan    POST /v2/finetuning?Action=DescribeFineTuningTask  (BCE-signed, as the qianfan SDK signs)
  openai     GET  /v1/fine_tuning/jobs/{id}
  dashscope  GET  /api/v1/fine-tunes/{id}

Latency is measured from each request's scheduled send time (so a stalled server cannot hide queueing) to
its last byte. First, the same client drives bench/bare_asgi.py under the same uvicorn settings ("bare":
no framework, database or auth), which gives this machine's ceiling in requests per CPU-second for the
stack; --no-reference skips it. "per core" divides the completed requests by the CPU seconds the server
processes (all workers) spent in that phase. It measures first with --small jobs, then seeds up to --jobs
and measures again, to show whether the cost depends on the number of jobs. Prints a table and one JSON line.

  .venv/bin/python bench/api_latency.py                      # 1k then 100k jobs, 400 req/s, 10 s each
  .venv/bin/python bench/api_latency.py --rate 800 --workers 2 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tunehouse.api.qianfan.signing import PREFIX, canonical_request, sign  # noqa: E402
from tunehouse.core import catalog  # noqa: E402

ACCOUNT = "bench"
CALLS = ("qianfan", "openai", "dashscope")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_of(i: int) -> str:
    return f"b{i:011d}"  # a well-formed 12-character key, unique per seeded job


# ---- seeding ---------------------------------------------------------------------------------------


def _copy(cur: psycopg.Cursor[Any], table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def seed(dsn: str, account_id: int, file_id: int, start: int, stop: int) -> None:
    """Jobs start..stop-1, each with one succeeded LoRA SFT run and its checkpoint, as a run leaves them."""
    hyper = json.dumps(catalog.capabilities("tunehouse-tiny").resolve("sft", "lora", {}))
    dataset = json.dumps({"files": [file_id], "validation_files": [], "split_ratio": 0})
    base = datetime(2026, 11, 1, tzinfo=UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM jobs")
        job0 = int(cur.fetchone()[0])  # type: ignore[index]
        cur.execute("SELECT coalesce(max(id), 0) FROM runs")
        run0 = int(cur.fetchone()[0])  # type: ignore[index]
        jobs, runs, ckpts = [], [], []
        for n, i in enumerate(range(start, stop)):
            key = key_of(i)
            created = base + timedelta(seconds=i)
            jid, rid = job0 + n + 1, run0 + n + 1
            jobs.append(
                (jid, key, account_id, f"job-{i}", "", "tunehouse-tiny", "sft", "lora", "{}", created)
            )
            extra = json.dumps({"unknown_hyperparameters": {}, "output_name": f"tunehouse-tiny-ft-{key}"})
            metrics = json.dumps({"train_loss": 1.25, "eval_loss": 1.5, "trained_tokens": 12345})
            runs.append(
                (rid, key, account_id, jid, 1, "tunehouse-tiny", "sft", "lora", hyper, dataset, extra,
                 "succeeded", 100, 30, 30, metrics, False, 1, 0, "local", "{}", created,
                 created + timedelta(seconds=1), created + timedelta(seconds=60))
            )  # fmt: skip
            ckpts.append((rid, 30, f"/nonexistent/{key}/step-30", json.dumps({"eval_loss": 1.5}), created))
        _copy(cur, "jobs", ["id", "key", "account_id", "name", "description", "base_model", "train_mode",
                            "parameter_scale", "hyperparameters", "created_at"], jobs)  # fmt: skip
        _copy(cur, "runs", ["id", "key", "account_id", "job_id", "version", "base_model", "train_mode",
                            "parameter_scale", "hyperparameters", "dataset", "extra", "state", "progress",
                            "step", "total_steps", "metrics", "stop_requested", "attempts", "last_event_seq",
                            "executor", "handle", "created_at", "started_at", "finished_at"],
              runs)  # fmt: skip
        _copy(cur, "checkpoints", ["run_id", "step", "path", "metrics", "created_at"], ckpts)
        # Identity columns were bypassed by explicit ids: move them past what was written.
        for table in ("jobs", "runs"):
            seq = f"pg_get_serial_sequence('{table}', 'id')"
            cur.execute(f"SELECT setval({seq}, (SELECT max(id) FROM {table}))")
        cur.execute("ANALYZE")


def seed_account(dsn: str) -> tuple[int, int]:
    """The account's id and one uploaded-file row the runs trained on."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,))
        account_id = int(cur.fetchone()[0])  # type: ignore[index]
        cur.execute(
            "INSERT INTO files (key, account_id, filename, purpose, bytes, sha256, format, rows, path,"
            " description, created_at) VALUES ('bfile0000000', %s, 'train.jsonl', 'fine-tune', 100, %s,"
            " 'chat', 10, '/nonexistent/train.jsonl', '', now()) RETURNING id",
            (account_id, hashlib.sha256(b"").hexdigest()),
        )
        return account_id, int(cur.fetchone()[0])  # type: ignore[index]


# ---- the server ------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


def tunehouse(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tunehouse", *args], env=env, check=True,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.stdout


def start_server(env: dict[str, str], port: int, serve_args: list[str], log: Path) -> Server:
    cmd = [sys.executable, "-m", "tunehouse", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return _started(cmd + serve_args, env, port, log)


def start_reference(env: dict[str, str], port: int, log: Path) -> Server:
    """bench/bare_asgi.py under the same uvicorn settings as `tunehouse serve`."""
    cmd = [sys.executable, "-m", "uvicorn", "bare_asgi:app", "--app-dir", str(ROOT / "bench"),
           "--host", "127.0.0.1", "--port", str(port),
           "--http", "httptools", "--loop", "uvloop", "--no-access-log"]  # fmt: skip
    return _started(cmd, env, port, log)


def _started(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become healthy")


# ---- the load --------------------------------------------------------------------------------------


@dataclass
class Creds:
    access_key: str
    secret_key: str
    api_key: str


def qianfan_request(creds: Creds, host: str, key: str) -> tuple[str, str, dict[str, str], bytes]:
    path, query = "/v2/finetuning", [("Action", "DescribeFineTuningTask")]
    body = json.dumps({"taskId": "task-" + key}).encode()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"host": host, "content-type": "application/json", "x-bce-date": stamp}
    signed = ["content-type", "host", "x-bce-date"]
    auth_prefix = f"{PREFIX}/{creds.access_key}/{stamp}/1800"
    signature = sign(creds.secret_key, auth_prefix, canonical_request("POST", path, query, headers, signed))
    headers["authorization"] = f"{auth_prefix}/{';'.join(signed)}/{signature}"
    return "POST", f"{path}?Action=DescribeFineTuningTask", headers, body


def request_for(
    call: str, creds: Creds, host: str, key: str, created: datetime
) -> tuple[str, str, dict[str, str], bytes]:
    bearer = {"authorization": f"Bearer {creds.api_key}"}
    if call == "qianfan":
        return qianfan_request(creds, host, key)
    if call == "openai":
        return "GET", f"/v1/fine_tuning/jobs/ftjob-{key}", bearer, b""
    if call == "bare":
        return "GET", f"/v1/fine_tuning/jobs/ftjob-{key}", {}, b""
    return "GET", f"/api/v1/fine-tunes/ft-{created:%Y%m%d%H%M}-{key}", bearer, b""


@dataclass
class Phase:
    call: str
    jobs: int
    offered: float
    sent: int
    ok: int
    errors: int
    wall_s: float
    server_cpu_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    load1: float  # the machine's 1-minute load average as the phase ended: how shared the cores were

    @property
    def achieved(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def per_core(self) -> float:
        return self.ok / self.server_cpu_s if self.server_cpu_s else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def drive(server: Server, creds: Creds, call: str, jobs: int, args: argparse.Namespace) -> Phase:
    host = server.url.removeprefix("http://")
    base = datetime(2026, 11, 1, tzinfo=UTC)
    total = min(args.max_requests, int(args.rate * args.duration))
    rng = random.Random(7)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as http:

        async def one(due: float) -> None:
            nonlocal errors
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i = rng.randrange(jobs)
            created = base + timedelta(seconds=i)
            method, url, headers, body = request_for(call, creds, host, key_of(i), created)
            try:
                async with http.request(method, url, headers=headers, data=body or None) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        async def paced(count: int) -> None:
            """Sends at the offered rate whatever the answers do (open loop); a request exists from its
            send time on, so the client holds only what is in flight."""
            t0, flying = time.perf_counter(), set()
            for k in range(count):
                due = t0 + k / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(due))
                flying.add(task)
                task.add_done_callback(flying.discard)
            await asyncio.gather(*flying)

        # A short warm-up at the same rate fills the pools and caches; it is not counted.
        await paced(min(200, total))
        latencies.clear()
        errors = 0
        # The client's own collector pauses would count as the server's latency: none during the phase.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            cpu0 = server.cpu_seconds()
            t0 = time.perf_counter()
            await paced(total)
            wall = time.perf_counter() - t0
            cpu = server.cpu_seconds() - cpu0
        finally:
            gc.enable()
            gc.unfreeze()
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return Phase(call, jobs, args.rate, total, len(ms), errors, wall, cpu,
                 percentile(ms, 0.50), percentile(ms, 0.99), ms[-1] if ms else float("nan"),
                 os.getloadavg()[0])  # fmt: skip


# ---- main ------------------------------------------------------------------------------------------


def report(phase: Phase) -> None:
    print(
        f"{phase.call:10} jobs={phase.jobs:>7} offered={phase.offered:>6.0f}/s "
        f"ok={phase.ok:>6} err={phase.errors:>4} achieved={phase.achieved:>6.0f}/s "
        f"p50={phase.p50_ms:>7.1f}ms p99={phase.p99_ms:>7.1f}ms max={phase.max_ms:>7.1f}ms "
        f"server_cpu={phase.server_cpu_s:>5.1f}s per_core={phase.per_core:>6.0f} req/s "
        f"load1={phase.load1:.1f}",
        file=sys.stderr,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100_000, help="jobs in the database for the large phase")
    p.add_argument("--small", type=int, default=1_000, help="jobs for the first phase (0: skip it)")
    p.add_argument("--rate", type=float, default=400.0, help="offered requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per call and phase, at most")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per call and phase, at most")
    p.add_argument("--connections", type=int, default=64, help="client connections at most")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    p.add_argument("--workers", type=int, default=1, help="API processes (serve --workers N)")
    p.add_argument(
        "--with-scheduler", action="store_true", help="run the scheduler in the server (default: API only)"
    )
    p.add_argument("--calls", default=",".join(CALLS), help="which calls, comma-separated")
    p.add_argument(
        "--no-reference", action="store_true", help="skip the bare-uvicorn reference (bench/bare_asgi.py)"
    )
    p.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--keep", action="store_true", help="keep the database and home (printed) afterwards")
    args = p.parse_args()
    calls = [c for c in args.calls.split(",") if c]

    db = f"tunehouse_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = args.pg_admin.rsplit("/", 1)[0] + "/" + db
    home = Path(tempfile.mkdtemp(prefix="tunehouse-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "TUNEHOUSE_HOME": str(home),
        "TUNEHOUSE_DATABASE_URL": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
        "TUNEHOUSE_GPUS": "none",
    }
    server: Server | None = None
    results: list[Phase] = []
    try:
        keys = json.loads(tunehouse(env, "keys", "create", "--account", ACCOUNT, "--json"))
        creds = Creds(keys["access_key"], keys["secret_key"], keys["api_key"])
        account_id, file_id = seed_account(dsn)
        serve_args = ["--workers", str(args.workers)] if args.workers > 1 else []
        serve_args += [] if args.with_scheduler else ["--no-scheduler"]
        if not args.no_reference:
            reference = start_reference(env, free_port(), home / "reference.log")
            try:
                phase = asyncio.run(drive(reference, creds, "bare", 1, args))
            finally:
                reference.proc.kill()
                reference.proc.wait()
            results.append(phase)
            report(phase)
        sizes = [n for n in (args.small, args.jobs) if n > 0]
        seeded = 0
        for n in sizes:
            t = time.perf_counter()
            seed(dsn, account_id, file_id, seeded, n)
            print(f"seeded {n - seeded} jobs in {time.perf_counter() - t:.1f}s (now {n})", file=sys.stderr)
            seeded = n
            if server is None:
                server = start_server(env, free_port(), serve_args, home / "server.log")
            for call in calls:
                phase = asyncio.run(drive(server, creds, call, n, args))
                results.append(phase)
                report(phase)
    finally:
        if server is not None:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.proc.kill()
        if args.keep:
            print(f"kept database {db} and home {home}", file=sys.stderr)
        else:
            with psycopg.connect(args.pg_admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(json.dumps([{**r.__dict__, "achieved": round(r.achieved, 1), "per_core": round(r.per_core, 1)}
                      for r in results]))  # fmt: skip


if __name__ == "__main__":
    main()
