"""Prometheus metrics for /metrics.

HTTP requests and their latency are counted in each API process (and summed over all of them when `serve`
runs several: prometheus_client's multiprocess mode). Runs, queue depth and trained tokens are read from
the store at scrape time, so every replica reports the same truth. GPU memory and utilisation of running
trainers come from nvidia-smi on the scraped machine; without one (a CPU machine) those families have no
samples.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunehouse.api.query_memo import per_query
from tunehouse.core.states import ACTIVE, RunState
from tunehouse.store.db import Database
from tunehouse.store.models import Run

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Middlewares between the two halves copy the scope; this dict is shared by every copy.
ROUTE_BOX = "tunehouse.metrics.route"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Not in the global registry: each app's registry takes them (or, with several processes, their files).
REQUESTS = Counter(
    "tunehouse_http_requests",
    "HTTP requests answered, by dialect, route template, method and status",
    ["dialect", "route", "method", "status"],
    registry=None,
)
LATENCY = Histogram(
    "tunehouse_http_request_duration_seconds",
    "Time from request to the last byte of the answer, by dialect and route template",
    ["dialect", "route"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)


def dialect_of(path: str) -> str:
    if path.startswith(("/v2/", "/wenxinworkshop/", "/rpc/2.0/ai_custom/", "/v1/BCE-BEARER/")):
        return "qianfan"
    if path.startswith(("/api/v1/", "/compatible-mode/")):
        return "dashscope"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/console"):
        return "console"
    return "other"


def route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values); Qianfan V2 adds its Action, if it is one."""
    route = scope.get("route") or scope.get(ROUTE_BOX, {}).get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    if template == "/v2/finetuning":
        return _v2_route(scope.get("query_string", b""))
    return template


@per_query(maxsize=256)
def _v2_route(query: bytes) -> str:
    from tunehouse.api.qianfan.v2 import ACTIONS

    text = query.decode("latin-1")
    action = next((p[7:] for p in text.split("&") if p.startswith("Action=")), "")
    return f"/v2/finetuning?Action={action if action in ACTIONS else 'other'}"


class RequestMetrics:
    """ASGI middleware: counts each answered request and observes its latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        scope[ROUTE_BOX] = {}
        try:
            await self.app(scope, receive, send_and_see)
        finally:
            counter, latency = _children(dialect_of(scope["path"]), route_of(scope), scope["method"], status)
            counter.inc()
            latency.observe(time.perf_counter() - started)


_Children = tuple[Any, Any]
# The label children by label values: `labels()` takes a lock and builds its key on every call. Bounded as
# the label values are (templates, methods, statuses), and cleared past that bound all the same.
_by_labels: dict[tuple[str, str, str, int], _Children] = {}
MAX_LABEL_SETS = 4096


def _children(dialect: str, route: str, method: str, status: int) -> _Children:
    key = (dialect, route, method, status)
    found = _by_labels.get(key)
    if found is None:
        if len(_by_labels) >= MAX_LABEL_SETS:
            _by_labels.clear()
        found = _by_labels[key] = (
            REQUESTS.labels(dialect, route, method, str(status)),
            LATENCY.labels(dialect, route),
        )
    return found


class RouteNoter:
    """ASGI middleware innermost of all: hands the route the router matched back to RequestMetrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            box = scope.get(ROUTE_BOX)
            if box is not None and "route" in scope:
                box["route"] = scope["route"]


def build_registry(db: Database, multiprocess_dir: str | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if multiprocess_dir:
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    else:
        registry.register(REQUESTS)
        registry.register(LATENCY)
    registry.register(StoreCollector(db))
    registry.register(GpuCollector(db))
    return registry


class StoreCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.db.session() as s:
            rows = s.execute(
                select(Run.state, Run.executor, func.count())
                .where(Run.deleted_at.is_(None))
                .group_by(Run.state, Run.executor)
            ).all()
            # Deleted runs count too: their tokens were trained.
            tokens = s.scalar(select(func.sum(Run.metrics["trained_tokens"].as_float())))
        counts = {(state, executor or "none"): n for state, executor, n in rows}
        executors = {"none", "local"} | {e for _, e in counts}
        runs = GaugeMetricFamily(
            "tunehouse_runs",
            "Runs by state and executor (all accounts; 'none': never launched)",
            labels=["state", "executor"],
        )
        for state in RunState:
            for executor in sorted(executors):
                runs.add_metric([state.value, executor], float(counts.get((state.value, executor), 0)))
        yield runs
        queued = sum(n for (state, _), n in counts.items() if state == RunState.QUEUED)
        yield GaugeMetricFamily("tunehouse_queue_depth", "Runs queued for a trainer", value=float(queued))
        yield GaugeMetricFamily(
            "tunehouse_trained_tokens",
            "Tokens trained by all runs so far (the trainers' own counts; running runs included)",
            value=float(tokens or 0),
        )


class GpuCollector(Collector):
    """Running trainers of this machine (the pid in the run's handle, same start time) on a GPU."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memory = GaugeMetricFamily(
            "tunehouse_trainer_gpu_memory_bytes",
            "GPU memory used by each running trainer (nvidia-smi; absent without a GPU)",
            labels=["run", "gpu"],
        )
        util = GaugeMetricFamily(
            "tunehouse_trainer_gpu_utilization_ratio",
            "Utilisation (0-1) of the GPU each running trainer holds (nvidia-smi; absent without a GPU)",
            labels=["run", "gpu"],
        )
        trainers = self._local_trainers()
        smi = shutil.which("nvidia-smi") if trainers else None
        if smi is not None:
            per_pid = parse_compute_apps(_smi(smi, "--query-compute-apps=pid,used_memory"))
            per_gpu = parse_gpus(_smi(smi, "--query-gpu=index,uuid,utilization.gpu"))
            for key, pid, gpu in trainers:
                if pid in per_pid:
                    memory.add_metric([key, gpu], per_pid[pid])
                if gpu in per_gpu:
                    util.add_metric([key, gpu], per_gpu[gpu])
        yield memory
        yield util

    def _local_trainers(self) -> list[tuple[str, int, str]]:
        with self.db.session() as s:
            rows = s.execute(
                select(Run.key, Run.handle).where(Run.state.in_([st.value for st in ACTIVE]))
            ).all()
        found = []
        for key, handle in rows:
            pid, gpu = handle.get("pid"), handle.get("gpu")
            if not pid or gpu is None:
                continue
            try:
                if abs(psutil.Process(int(pid)).create_time() - float(handle.get("create_time", 0))) > 1:
                    continue  # another machine's trainer, or the pid was reused
            except (psutil.Error, ValueError):
                continue
            gpus = str(gpu).split(",")
            if len(gpus) == 1:
                found.append((str(key), int(pid), str(gpu)))
                continue
            # A run of several GPUs: torchrun's ranks hold the memory, rank r on the run's r-th GPU.
            for rank in _ranks(int(pid)):
                local = rank[1]
                if 0 <= local < len(gpus):
                    found.append((str(key), rank[0], gpus[local]))
        return found


def _ranks(launcher: int) -> list[tuple[int, int]]:
    """(pid, LOCAL_RANK) of the trainer ranks a torchrun process started."""
    out = []
    try:
        children = psutil.Process(launcher).children()
    except psutil.Error:
        return []
    for child in children:
        try:
            out.append((child.pid, int(child.environ().get("LOCAL_RANK", "-1"))))
        except (psutil.Error, ValueError):
            continue
    return out


def _smi(smi: str, query: str) -> str:
    try:
        return subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _rows(text: str) -> Iterable[list[str]]:
    for line in text.splitlines():
        if line.strip():
            yield [part.strip() for part in line.split(",")]


def parse_compute_apps(text: str) -> dict[int, float]:
    """`pid, used_memory [MiB]` lines → bytes by pid (summed if a process uses several GPUs)."""
    out: dict[int, float] = {}
    for row in _rows(text):
        try:
            pid, mib = int(row[0]), float(row[1])
        except (IndexError, ValueError):
            continue  # "[N/A]" and the like
        out[pid] = out.get(pid, 0.0) + mib * 1024 * 1024
    return out


def parse_gpus(text: str) -> dict[str, float]:
    """`index, uuid, utilization.gpu [%]` lines → ratio by index and by uuid (either may be configured)."""
    out: dict[str, float] = {}
    for row in _rows(text):
        try:
            index, uuid, ratio = row[0], row[1], float(row[2]) / 100
        except (IndexError, ValueError):
            continue
        out[index] = out[uuid] = ratio
    return out
