"""The deployment supervisor against a real store, with scripted engines standing in for engine processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tunehouse.core import deployments as dep_svc
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.core.deployments import ServingTarget
from tunehouse.serving import supervisor as sup_mod
from tunehouse.serving.engine import BaseSpec, ChoiceEnd, Delta, EngineError, GenerationParams, Usage
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.db import Database

TARGET = ServingTarget("tunehouse-tiny", "tunehouse-tiny", "/models/tiny", None, "base")
ADAPTER_A = ServingTarget("ft:a", "tunehouse-tiny", "/models/tiny", "/runs/a/adapter", "lora_adapter")
ADAPTER_B = ServingTarget("ft:b", "tunehouse-tiny", "/models/tiny", "/runs/b/adapter", "lora_adapter")
FULL = ServingTarget("ft:full", "tunehouse-tiny", "/models/tiny", "/runs/full/model", "full")
DEADLINE_S = 60  # generous: the store is real and the machine may be busy


class ScriptedEngine:
    """Starts (or refuses to), answers "hi" (with the adapter's path when one is asked for) once `release`
    is set, and dies when told to."""

    name = "scripted"
    started: list[ScriptedEngine] = []
    fail_start: str | None = None

    def __init__(self) -> None:
        self.died: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()
        self.release.set()
        self.running = 0
        self.most_at_once = 0
        self.stopped = False
        self.base: BaseSpec | None = None
        self.adapters: dict[str, str] = {}

    async def start(self, base: BaseSpec, workdir: Path) -> None:
        if ScriptedEngine.fail_start:
            raise EngineError(ScriptedEngine.fail_start)
        self.base = base
        ScriptedEngine.started.append(self)

    async def load_adapter(self, name: str, path: str) -> None:
        self.adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        del self.adapters[name]

    async def generate(
        self, adapter: str | None, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[Any]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            yield Delta(0, "hi" if adapter is None else f"hi {self.adapters[adapter]}")
            yield ChoiceEnd(0, "stop", 1)
            yield Usage(3, 1)
        finally:
            self.running -= 1

    async def wait_exit(self) -> str:
        return await self.died

    def exit_reason(self) -> str | None:
        return self.died.result() if self.died.done() else None

    def pid(self) -> int | None:
        return None

    def die(self, reason: str) -> None:
        self.died.set_result(reason)

    async def stop(self) -> None:
        self.stopped = True
        if not self.died.done():
            self.died.set_result("stopped")


@pytest.fixture(autouse=True)
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    ScriptedEngine.started, ScriptedEngine.fail_start = [], None
    monkeypatch.setitem(sup_mod.ENGINES, "transformers", ScriptedEngine)
    monkeypatch.setattr(sup_mod, "MAX_RESTARTS", 1)
    yield


@pytest.fixture
def account(sqlite_db: Database) -> int:
    with sqlite_db.session() as s:
        return get_or_create_account(s, "acme").id


def new_deployment(
    db: Database, account: int, capacity: int = 1, target: ServingTarget = TARGET, endpoint: str = "tiny"
) -> str:
    with db.session() as s:
        return dep_svc.create_deployment(
            s, account, target, endpoint=endpoint, engine="transformers", capacity=capacity
        ).key


def status(db: Database, key: str) -> tuple[str, str | None] | None:
    with db.session() as s:
        dep = dep_svc.deployment_by_key(s, key)
        return None if dep is None else (dep.status, dep.error)


async def until(check: Callable[[], Any]) -> Any:
    async with asyncio.timeout(DEADLINE_S):
        while not (value := check()):
            await asyncio.sleep(0.02)
        return value


async def answer(sup: Supervisor, key: str) -> str:
    return "".join([e.text async for e in sup.generate(key, [], GenerationParams()) if isinstance(e, Delta)])


def test_first_use_takes_a_deployment_to_running_and_counts_its_requests(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    key = new_deployment(sqlite_db, account)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        assert await answer(sup, key) == "hi"
        await sup.shutdown()

    asyncio.run(scenario())
    with sqlite_db.session() as s:
        dep = dep_svc.deployment_by_key(s, key)
        assert dep is not None and dep.requests == 1 and dep.status == S.STOPPED  # shutdown frees engines


def test_an_engine_that_cannot_start_marks_the_deployment_failed_with_the_reason(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    key = new_deployment(sqlite_db, account)
    ScriptedEngine.fail_start = "the engine process exited with code 1: CUDA out of memory"

    async def scenario() -> None:
        with pytest.raises(EngineError):
            await Supervisor(sqlite_db, tmp_path).ensure(key)

    asyncio.run(scenario())
    assert status(sqlite_db, key) == (S.FAILED, ScriptedEngine.fail_start)


def test_a_dead_engine_is_restarted_then_marked_failed_when_it_keeps_dying(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    key = new_deployment(sqlite_db, account)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        ScriptedEngine.started[0].die("killed by signal 9")
        await until(lambda: len(ScriptedEngine.started) == 2 and status(sqlite_db, key) == (S.RUNNING, None))
        assert await answer(sup, key) == "hi"  # the restarted engine answers
        ScriptedEngine.started[1].die("killed by signal 9")  # past MAX_RESTARTS
        await until(lambda: status(sqlite_db, key) == (S.FAILED, "killed by signal 9"))

    asyncio.run(scenario())


def test_requests_beyond_the_capacity_wait_their_turn(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    key = new_deployment(sqlite_db, account, capacity=1)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        engine = ScriptedEngine.started[0]
        engine.release.clear()
        calls = [asyncio.create_task(answer(sup, key)) for _ in range(3)]
        await until(lambda: sup.stats(key)["waiting"] == 2 and engine.running == 1)
        engine.release.set()
        assert await asyncio.gather(*calls) == ["hi"] * 3
        assert engine.most_at_once == 1

    asyncio.run(scenario())


def test_deleting_stops_the_engine_and_removes_the_record(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    key = new_deployment(sqlite_db, account)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        await sup.delete(key)
        assert ScriptedEngine.started[0].stopped and not sup.is_live(key)

    asyncio.run(scenario())
    assert status(sqlite_db, key) is None


def test_lora_deployments_of_one_base_share_one_engine_each_answering_with_its_own_adapter(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    a = new_deployment(sqlite_db, account, target=ADAPTER_A, endpoint="a")
    b = new_deployment(sqlite_db, account, target=ADAPTER_B, endpoint="b")
    base = new_deployment(sqlite_db, account)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        answers = [await answer(sup, key) for key in (a, b, base)]
        assert answers == ["hi /runs/a/adapter", "hi /runs/b/adapter", "hi"]
        [engine] = ScriptedEngine.started
        assert engine.base == BaseSpec("tunehouse-tiny", "/models/tiny", None)
        assert sorted(engine.adapters.values()) == ["/runs/a/adapter", "/runs/b/adapter"]
        assert sup.stats(a)["shared_by"] == 3

    asyncio.run(scenario())


def test_deleting_one_adapter_deployment_unloads_its_adapter_and_the_last_one_stops_the_engine(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    a = new_deployment(sqlite_db, account, target=ADAPTER_A, endpoint="a")
    b = new_deployment(sqlite_db, account, target=ADAPTER_B, endpoint="b")

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(a)
        await sup.ensure(b)
        [engine] = ScriptedEngine.started
        await sup.delete(a)
        assert list(engine.adapters.values()) == ["/runs/b/adapter"] and not engine.stopped
        assert await answer(sup, b) == "hi /runs/b/adapter"
        await sup.delete(b)
        assert engine.stopped and len(ScriptedEngine.started) == 1

    asyncio.run(scenario())
    assert status(sqlite_db, a) is None and status(sqlite_db, b) is None


def test_a_full_fine_tune_gets_an_engine_of_its_own(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    a = new_deployment(sqlite_db, account, target=ADAPTER_A, endpoint="a")
    full = new_deployment(sqlite_db, account, target=FULL, endpoint="full")

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(a)
        assert await answer(sup, full) == "hi"
        shared, own = ScriptedEngine.started
        assert own.base == BaseSpec("tunehouse-tiny", "/models/tiny", "/runs/full/model") and not own.adapters
        assert list(shared.adapters.values()) == ["/runs/a/adapter"]

    asyncio.run(scenario())


def test_a_dead_shared_engine_comes_back_with_every_adapter_then_fails_them_all(
    sqlite_db: Database, account: int, tmp_path: Path
) -> None:
    a = new_deployment(sqlite_db, account, target=ADAPTER_A, endpoint="a")
    b = new_deployment(sqlite_db, account, target=ADAPTER_B, endpoint="b")

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(a)
        await sup.ensure(b)
        ScriptedEngine.started[0].die("killed by signal 9")
        await until(lambda: len(ScriptedEngine.started) == 2 and sup.is_live(a) and sup.is_live(b))
        assert sorted(ScriptedEngine.started[1].adapters.values()) == ["/runs/a/adapter", "/runs/b/adapter"]
        assert await answer(sup, b) == "hi /runs/b/adapter"
        ScriptedEngine.started[1].die("killed by signal 9")  # past MAX_RESTARTS
        await until(lambda: status(sqlite_db, a) == status(sqlite_db, b) == (S.FAILED, "killed by signal 9"))

    asyncio.run(scenario())
