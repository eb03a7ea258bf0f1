"""The deployment supervisor, in the server process: starts and stops engines, restarts a dead one or marks
its deployment FAILED with the reason, and queues each deployment's requests behind its concurrency limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.serving.engine import Engine, EngineError, GenerationEvent, GenerationParams, LoadSpec
from tunehouse.serving.transformers_engine import TransformersEngine
from tunehouse.store.db import Database

log = logging.getLogger(__name__)

# An engine that dies is restarted this many times in a row before its deployment is marked FAILED.
MAX_RESTARTS = int(os.environ.get("TUNEHOUSE_ENGINE_MAX_RESTARTS", "2"))
ENGINES: dict[str, Callable[[], Engine]] = {"transformers": TransformersEngine}


@dataclass
class _Live:
    engine: Engine
    gate: asyncio.Semaphore
    restarts: int = 0
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False
    in_flight: int = 0
    waiting: int = 0
    spec: LoadSpec | None = field(default=None)


class Supervisor:
    def __init__(self, db: Database, workdir: Path) -> None:
        self.db = db
        self.workdir = workdir
        self._live: dict[str, _Live] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reconciler: asyncio.Task[None] | None = None

    # ---- store updates, off the event loop ----------------------------------------------------------
    async def _move(self, key: str, target: S, error: str | None = None) -> None:
        def do() -> None:
            with self.db.session() as s:
                dep = dep_svc.deployment_by_key(s, key)
                if dep is not None and dep.status != target and dep_svc.can_move(dep.status, target):
                    dep_svc.move(s, dep, target, error)

        await asyncio.to_thread(do)

    async def _load_spec(self, key: str) -> tuple[LoadSpec, str, int, str]:
        def do() -> tuple[LoadSpec, str, int, str]:
            with self.db.session() as s:
                dep = dep_svc.deployment_by_key(s, key)
                if dep is None or dep.status == S.DELETING:
                    raise EngineError("the deployment is being deleted")
                spec = LoadSpec(key, dep.base_model, dep.base_path, dep.weights_path, dep.weights_kind)
                return spec, dep.engine, dep.capacity, dep.status

        return await asyncio.to_thread(do)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def is_live(self, key: str) -> bool:
        live = self._live.get(key)
        return live is not None and live.engine.exit_reason() is None

    async def ensure(self, key: str) -> None:
        """The deployment's engine is running when this returns; the first caller starts it, others wait."""
        if self.is_live(key):
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self.is_live(key):
                return
            spec, engine_name, capacity, status = await self._load_spec(key)
            if status != S.DEPLOYING:
                await self._move(key, S.DEPLOYING)
            engine = ENGINES[engine_name]()
            try:
                await engine.start(spec, self.workdir / key)
            except EngineError as exc:
                await self._move(key, S.FAILED, str(exc))
                raise
            live = self._live.get(key)
            if live is None:
                live = _Live(engine=engine, gate=asyncio.Semaphore(capacity), spec=spec)
                self._live[key] = live
            else:  # a restart keeps the queue and its count of restarts
                live.engine = engine
            live.watcher = asyncio.create_task(self._watch(key, live, engine))
            await self._move(key, S.RUNNING)

    async def _watch(self, key: str, live: _Live, engine: Engine) -> None:
        reason = await engine.wait_exit()
        if live.stopping or live.engine is not engine:
            return
        if live.restarts >= MAX_RESTARTS:
            log.warning("engine of deployment %s died (%s); marking it FAILED", key, reason)
            self._live.pop(key, None)
            await self._move(key, S.FAILED, reason)
            return
        live.restarts += 1
        log.warning("engine of deployment %s died (%s); restart %d", key, reason, live.restarts)
        try:
            await self.ensure(key)
        except EngineError:
            self._live.pop(key, None)

    async def generate(
        self, key: str, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[GenerationEvent]:
        """Queued behind the deployment's concurrency limit, then streamed from its engine."""
        await self.ensure(key)
        live = self._live[key]
        live.waiting += 1
        try:
            await live.gate.acquire()
        finally:
            live.waiting -= 1
        live.in_flight += 1
        try:
            await asyncio.to_thread(self._count_request, key)
            async for event in live.engine.generate(messages, params):
                yield event
        finally:
            live.in_flight -= 1
            live.gate.release()

    def _count_request(self, key: str) -> None:
        with self.db.session() as s:
            dep = dep_svc.deployment_by_key(s, key)
            if dep is not None:
                dep.requests = (dep.requests or 0) + 1

    async def stop(self, key: str) -> None:
        """End the engine and free its memory; the record stays (STOPPED or as the caller moves it)."""
        live = self._live.pop(key, None)
        if live is None:
            return
        live.stopping = True
        await live.engine.stop()
        if live.watcher is not None:
            live.watcher.cancel()

    async def delete(self, key: str) -> None:
        """DELETING → engine stopped → record gone."""
        await self._move(key, S.DELETING)
        await self.stop(key)

        def forget() -> None:
            with self.db.session() as s:
                dep = dep_svc.deployment_by_key(s, key)
                if dep is not None:
                    dep_svc.forget(s, dep)

        await asyncio.to_thread(forget)

    def stats(self, key: str) -> dict[str, int]:
        live = self._live.get(key)
        if live is None:
            return {"in_flight": 0, "waiting": 0, "restarts": 0}
        return {"in_flight": live.in_flight, "waiting": live.waiting, "restarts": live.restarts}

    def memory_bytes(self, key: str) -> int | None:
        """Resident memory of the deployment's engine process, when this process runs it (Linux)."""
        live = self._live.get(key)
        proc = getattr(live.engine, "proc", None) if live is not None else None
        pid = getattr(proc, "pid", None)
        if not isinstance(pid, int) or not self.is_live(key):
            return None
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                resident_pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return resident_pages * os.sysconf("SC_PAGE_SIZE")

    async def stop_deployment(self, key: str) -> None:
        """Free the engine's memory and mark the record STOPPED; the next call (or deploy) starts it again."""
        await self.stop(key)
        await self._move(key, S.STOPPED)

    async def reconcile(self) -> None:
        """Finish deletions asked for elsewhere (the CLI, another server process) and free the engines of
        records that are gone."""

        def look() -> tuple[list[str], list[str]]:
            held = list(self._live)
            with self.db.session() as s:
                present = dep_svc.existing_keys(s, held)
                return dep_svc.deleting_keys(s), [k for k in held if k not in present]

        deleting, gone = await asyncio.to_thread(look)
        for key in deleting:
            await self.delete(key)
        for key in gone:
            await self.stop(key)

    def start_reconciling(self, every_s: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await self.reconcile()
                except Exception:  # a store hiccup: try again next round
                    log.exception("reconciling deployments failed")

        self._reconciler = asyncio.create_task(loop())

    async def shutdown(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
        for key in list(self._live):
            await self.stop(key)
            await self._move(key, S.STOPPED)

    # ---- deploy steps that answer before the engine has loaded (DashScope's Deployments) --------------
    def start_soon(self, key: str) -> None:
        """Start the deployment's engine in the background; a failure leaves it FAILED with the reason."""
        task = asyncio.create_task(self._start_quietly(key))
        _BACKGROUND.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(_BACKGROUND.discard)

    async def _start_quietly(self, key: str) -> None:
        try:
            await self.ensure(key)
        except EngineError as exc:  # ensure has recorded it on the deployment
            log.info("deployment %s did not start: %s", key, exc)

    def resize(self, key: str, old: int, new: int) -> None:
        """A running deployment's concurrency limit from `old` to `new` (a stopped one reads it at start)."""
        live = self._live.get(key)
        if live is None or new == old:
            return
        if new > old:
            for _ in range(new - old):
                live.gate.release()
            return
        task = asyncio.create_task(_withhold(live.gate, old - new))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def undeploy(self, key: str) -> None:
        """`delete`, once a start in progress has finished: no engine outlives its record."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            await self._move(key, S.DELETING)  # from here `ensure` refuses to start it
        await self.delete(key)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _withhold(gate: asyncio.Semaphore, permits: int) -> None:
    # Lowering a limit: take permits as requests in flight return them, and keep them.
    for _ in range(permits):
        await gate.acquire()
