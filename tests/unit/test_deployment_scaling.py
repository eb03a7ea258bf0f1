"""What DashScope's Deployments need of the core and the supervisor: named deployments, scaling, deploys
that answer before the engine has loaded, and deletes that wait for a start in progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_supervisor import (  # noqa: F401 - `scripted` stands the engines in for every test
    TARGET,
    ScriptedEngine,
    answer,
    new_deployment,
    scripted,
    status,
    until,
)
from tunehouse.core import deployments as dep_svc
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.core.errors import Conflict, InvalidParameter
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.db import Database


@pytest.fixture
def owner(sqlite_db: Database) -> int:
    with sqlite_db.session() as s:
        return get_or_create_account(s, "scaler").id


def test_a_deployment_is_named_after_its_model_with_the_suffix_if_any() -> None:
    assert dep_svc.endpoint_name("sums", "v1") == "sums-v1"
    assert dep_svc.endpoint_name("sums", None) == "sums"


def test_deploying_a_taken_name_again_is_deployment_exists(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep_svc.deploy_named(s, acct, TARGET, "named")
        with pytest.raises(dep_svc.DeploymentExists) as exc:
            dep_svc.deploy_named(s, acct, TARGET, "named")
    assert exc.value.message == "Model instance named already exists, please specify a suffix"


def test_a_named_deployment_is_found_by_its_owner_only(
    database: Database, make_account: Callable[[], int]
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        mine = dep_svc.deploy_named(s, a, TARGET, "mine")
        found = dep_svc.find_deployment(s, a, "mine")
        assert found is not None and found.id == mine.id
        assert dep_svc.find_deployment(s, b, "mine") is None


def test_deployments_page_newest_first_with_a_total(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        made = [dep_svc.deploy_named(s, acct, TARGET, f"p{i}").endpoint for i in range(3)]
        assert dep_svc.count_deployments(s, acct) == 3
        assert [d.endpoint for d in dep_svc.page_deployments(s, acct, 0, 2)] == made[::-1][:2]
        assert [d.endpoint for d in dep_svc.page_deployments(s, acct, 2, 2)] == made[:1]


def test_scaling_sets_the_capacity_and_returns_the_previous_one(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    with database.session() as s:
        dep = dep_svc.deploy_named(s, acct, TARGET, "scale", capacity=2)
        assert dep_svc.scale_deployment(s, dep, 5) == 2 and dep.capacity == 5
        with pytest.raises(InvalidParameter):
            dep_svc.scale_deployment(s, dep, 0)
        dep_svc.request_delete(s, dep)
        with pytest.raises(Conflict):
            dep_svc.scale_deployment(s, dep, 3)


def test_raising_a_running_deployments_capacity_lets_more_requests_in_at_once(
    sqlite_db: Database,
    owner: int,
    tmp_path: Path,
) -> None:
    key = new_deployment(sqlite_db, owner, capacity=1)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        engine = ScriptedEngine.started[0]
        engine.release.clear()
        sup.resize(key, 1, 2)
        calls = [asyncio.create_task(answer(sup, key)) for _ in range(3)]
        await until(lambda: engine.running == 2 and sup.stats(key)["waiting"] == 1)
        engine.release.set()
        assert await asyncio.gather(*calls) == ["hi"] * 3

    asyncio.run(scenario())


def test_a_background_start_that_fails_leaves_the_deployment_failed(
    sqlite_db: Database,
    owner: int,
    tmp_path: Path,
) -> None:
    key = new_deployment(sqlite_db, owner)
    ScriptedEngine.fail_start = "no memory"

    async def scenario() -> None:
        Supervisor(sqlite_db, tmp_path).start_soon(key)
        await until(lambda: status(sqlite_db, key) == (S.FAILED, "no memory"))

    asyncio.run(scenario())


def test_undeploying_while_the_engine_starts_stops_it_once_started(
    sqlite_db: Database,
    owner: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_deployment(sqlite_db, owner)

    async def scenario() -> None:
        loaded = asyncio.Event()
        start = ScriptedEngine.start

        async def slow_start(self: ScriptedEngine, *args: Any) -> None:
            await loaded.wait()
            await start(self, *args)

        monkeypatch.setattr(ScriptedEngine, "start", slow_start)
        sup = Supervisor(sqlite_db, tmp_path)
        sup.start_soon(key)
        await until(lambda: status(sqlite_db, key) == (S.DEPLOYING, None))
        gone = asyncio.create_task(sup.undeploy(key))
        loaded.set()
        await gone
        assert ScriptedEngine.started[0].stopped and not sup.is_live(key)

    asyncio.run(scenario())
    assert status(sqlite_db, key) is None
