"""The deployment supervisor, in the server process: starts and stops engines, restarts a dead one or marks
its deployments FAILED with the reason, and queues each deployment's requests behind its concurrency limit.

Deployments share engines: every LoRA deployment (fine-tuned model or checkpoint) and the base model itself,
on one engine kind and base, are served by one engine process holding the base once, each adapter loaded in
it while its deployment lives. A full fine-tune gets an engine of its own. The engine process ends when its
last deployment goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.serving.engine import (
    BaseSpec,
    Engine,
    EngineError,
    GenerationEvent,
    GenerationParams,
    LoadSpec,
)
from tunehouse.serving.transformers_engine import TransformersEngine
from tunehouse.serving.vllm_engine import VllmEngine
from tunehouse.store.db import Database

log = logging.getLogger(__name__)

# An engine that dies is restarted this many times in a row before its deployments are marked FAILED.
MAX_RESTARTS = int(os.environ.get("TUNEHOUSE_ENGINE_MAX_RESTARTS", "2"))
ENGINES: dict[str, Callable[[], Engine]] = {"transformers": TransformersEngine, "vllm": VllmEngine}

HostKey = tuple[str, str, str | None]  # engine kind, base model directory, full fine-tune weights


@dataclass
class _Host:
    """One engine process and the deployments it serves."""

    key: HostKey
    base: BaseSpec
    engine: Engine
    workdir: Path
    users: dict[str, LoadSpec] = field(default_factory=dict)
    restarts: int = 0
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Live:
    spec: LoadSpec
    host: HostKey
    gate: asyncio.Semaphore
    in_flight: int = 0
    waiting: int = 0


def host_key(engine: str, spec: LoadSpec) -> HostKey:
    base = spec.base()
    return (engine, base.base_path, base.full_weights)


class Supervisor:
    def __init__(self, db: Database, workdir: Path) -> None:
        self.db = db
        self.workdir = workdir
        self._live: dict[str, _Live] = {}
        self._hosts: dict[HostKey, _Host] = {}
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
        if live is None:
            return False
        host = self._hosts.get(live.host)
        return host is not None and key in host.users and host.engine.exit_reason() is None

    async def ensure(self, key: str) -> None:
        """The deployment's engine is running (its adapter loaded) when this returns; the first caller
        starts it, others wait."""
        if self.is_live(key):
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self.is_live(key):
                return
            spec, engine_name, capacity, status = await self._load_spec(key)
            if status != S.DEPLOYING:
                await self._move(key, S.DEPLOYING)
            hk = host_key(engine_name, spec)
            try:
                host = await self._running_host(hk, spec.base())
                if spec.adapter is not None and spec.weights_path is not None:
                    await host.engine.load_adapter(spec.adapter, spec.weights_path)
            except EngineError as exc:
                await self._move(key, S.FAILED, str(exc))
                raise
            host.users[key] = spec
            live = self._live.get(key)
            if live is None:
                self._live[key] = _Live(spec=spec, host=hk, gate=asyncio.Semaphore(capacity))
            else:  # a restart keeps the queue
                live.spec, live.host = spec, hk
            await self._move(key, S.RUNNING)

    async def _running_host(self, hk: HostKey, base: BaseSpec) -> _Host:
        """The engine process for `hk`, started (or restarted: the host keeps its count) if need be."""
        host = self._hosts.get(hk)
        if host is None:
            name = hashlib.sha256(repr(hk).encode()).hexdigest()[:12]
            host = _Host(hk, base, ENGINES[hk[0]](), self.workdir / "engines" / name)
            self._hosts[hk] = host
            fresh = True
        else:
            fresh = False
        async with host.lock:
            if not fresh and host.engine.exit_reason() is None and host.watcher is not None:
                return host
            if not fresh:  # it died: whoever used it loads its adapter again on its next ensure
                host.users.clear()
                host.engine = ENGINES[hk[0]]()
            try:
                await host.engine.start(base, host.workdir)
            except EngineError:
                if not host.users and self._hosts.get(hk) is host:
                    self._hosts.pop(hk, None)
                raise
            self._hosts[hk] = host  # again, if a failed start by another deployment had dropped it
            host.watcher = asyncio.create_task(self._watch(host, host.engine))
            return host

    async def _watch(self, host: _Host, engine: Engine) -> None:
        reason = await engine.wait_exit()
        if host.stopping or host.engine is not engine:
            return
        users = list(host.users)
        host.users.clear()  # each one's adapter must be loaded again into the new process
        if host.restarts >= MAX_RESTARTS:
            log.warning("engine %s died (%s); marking its deployments FAILED", host.key, reason)
            self._hosts.pop(host.key, None)
            for key in users:
                self._live.pop(key, None)
                await self._move(key, S.FAILED, reason)
            return
        host.restarts += 1
        log.warning("engine %s died (%s); restart %d", host.key, reason, host.restarts)
        for key in users:
            await self._move(key, S.DEPLOYING)
        for key in users:
            try:
                await self.ensure(key)
            except EngineError:  # ensure marked it FAILED with the reason
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
            host = self._hosts.get(live.host)
            if host is None or key not in host.users:
                raise EngineError("the deployment's engine is gone")
            async for event in host.engine.generate(live.spec.adapter, messages, params):
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
        """Free what the deployment holds: its adapter, or the engine process once no deployment uses it.
        The record stays (STOPPED or as the caller moves it)."""
        live = self._live.pop(key, None)
        if live is None:
            return
        host = self._hosts.get(live.host)
        if host is None:
            return
        async with host.lock:
            host.users.pop(key, None)
            if host.users:
                adapter = live.spec.adapter
                if adapter is not None and not any(u.adapter == adapter for u in host.users.values()):
                    with contextlib.suppress(EngineError):  # a dead engine holds nothing
                        await host.engine.unload_adapter(adapter)
                return
            host.stopping = True
            self._hosts.pop(live.host, None)
            await host.engine.stop()
            if host.watcher is not None:
                host.watcher.cancel()

    async def delete(self, key: str) -> None:
        """DELETING → engine stopped (or adapter unloaded) → record gone."""
        await self._move(key, S.DELETING)
        await self.stop(key)

        def forget() -> None:
            with self.db.session() as s:
                dep = dep_svc.deployment_by_key(s, key)
                if dep is not None:
                    dep_svc.forget(s, dep)

        await asyncio.to_thread(forget)

    def stats(self, key: str) -> dict[str, Any]:
        """Queue counts, restarts, and the engine process serving it: its pid, resident memory and how
        many deployments it serves."""
        live = self._live.get(key)
        host = None if live is None else self._hosts.get(live.host)
        if live is None or host is None:
            return dict.fromkeys(("in_flight", "waiting", "restarts", "memory_bytes", "shared_by"), 0) | {
                "pid": None
            }
        pid = host.engine.pid()
        return {
            "in_flight": live.in_flight,
            "waiting": live.waiting,
            "restarts": host.restarts,
            "pid": pid,
            "memory_bytes": resident_bytes(pid),
            "shared_by": len(host.users),
        }

    def memory_bytes(self, key: str) -> int | None:
        """Resident memory of the engine process serving the deployment, when this process runs it (Linux);
        an engine shared by several deployments reports its whole size for each."""
        if not self.is_live(key):
            return None
        return self.stats(key)["memory_bytes"] or None

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


def resident_bytes(pid: int | None) -> int:
    """The process's resident memory (Linux), its children included (vLLM's engine core is a child)."""
    if pid is None:
        return 0
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                for child in (task / "children").read_text().split():
                    out.append(int(child))
                    out.extend(_children(int(child)))
    return out
