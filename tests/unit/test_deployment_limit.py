"""The per-account deployment limit (core.deployments) against a real store, and the supervisor freeing the
engines of deployments deleted elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.test_supervisor import (
    ScriptedEngine,
    new_deployment,
    scripted,  # noqa: F401 - the fixture that swaps the engine in
    status,
    until,
)
from tunehouse.core import accounts
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import ServingTarget
from tunehouse.core.errors import InvalidParameter, QuotaExceeded
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.db import Database
from tunehouse.store.models import Account

TARGET = ServingTarget("tunehouse-tiny", "tunehouse-tiny", "/models/tiny", None, "base")

# The scripted engine stands in for worker processes here too.
pytestmark = pytest.mark.usefixtures("scripted")


def limit(db: Database, account: int, n: int | None) -> None:
    with db.session() as s:
        accounts.set_deployment_limit(s, s.get_one(Account, account), n)


def deploy(db: Database, account: int, endpoint: str) -> str:
    with db.session() as s:
        return dep_svc.create_deployment(s, account, TARGET, endpoint=endpoint).key


def test_a_deployment_beyond_the_accounts_limit_is_refused_and_not_created(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    limit(database, acct, 2)
    deploy(database, acct, "a")
    deploy(database, acct, "b")
    with pytest.raises(QuotaExceeded) as refused:
        deploy(database, acct, "c")
    assert refused.value.limit == 2 and "Too many deployments" in refused.value.message
    with database.session() as s:
        assert [d.endpoint for d in dep_svc.list_deployments(s, acct)] == ["a", "b"]


def test_stopped_and_failed_deployments_count_and_deleting_ones_do_not(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    limit(database, acct, 1)
    deploy(database, acct, "a")
    with database.session() as s:
        dep_svc.move(s, dep_svc.get_deployment(s, acct, "a"), dep_svc.S.STOPPED)
    with pytest.raises(QuotaExceeded):
        deploy(database, acct, "b")
    with database.session() as s:
        dep_svc.request_delete(s, dep_svc.get_deployment(s, acct, "a"))
    deploy(database, acct, "b")


def test_one_accounts_deployments_do_not_count_against_anothers_limit(
    database: Database, make_account: Callable[[], int]
) -> None:
    capped, free = make_account(), make_account()
    limit(database, capped, 1)
    for endpoint in ("a", "b", "c"):
        deploy(database, free, endpoint)
    deploy(database, capped, "a")


def test_lifting_the_limit_allows_more_and_a_limit_below_one_is_invalid(
    database: Database, make_account: Callable[[], int]
) -> None:
    acct = make_account()
    limit(database, acct, 1)
    deploy(database, acct, "a")
    limit(database, acct, None)
    deploy(database, acct, "b")
    with pytest.raises(InvalidParameter):
        limit(database, acct, 0)


def test_a_deployment_deleted_elsewhere_has_its_engine_freed_by_the_reconciler(
    sqlite_db: Database, tmp_path: Path
) -> None:
    with sqlite_db.session() as s:
        acct = accounts.get_or_create_account(s, "acme").id
    key = new_deployment(sqlite_db, acct)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        with sqlite_db.session() as s:  # as `tunehouse deployments delete` does, from another process
            dep_svc.request_delete(s, dep_svc.get_deployment(s, acct, "tiny"))
        sup.start_reconciling(every_s=0.05)
        await until(lambda: status(sqlite_db, key) is None)
        assert ScriptedEngine.started[0].stopped and not sup.is_live(key)
        await sup.shutdown()

    asyncio.run(scenario())


def test_an_engine_whose_record_is_gone_is_stopped(sqlite_db: Database, tmp_path: Path) -> None:
    with sqlite_db.session() as s:
        acct = accounts.get_or_create_account(s, "acme").id
    key = new_deployment(sqlite_db, acct)

    async def scenario() -> None:
        sup = Supervisor(sqlite_db, tmp_path)
        await sup.ensure(key)
        with sqlite_db.session() as s:  # another server process finished deleting it
            dep = dep_svc.get_deployment(s, acct, "tiny")
            dep_svc.request_delete(s, dep)
            dep_svc.forget(s, dep)
        await sup.reconcile()
        assert ScriptedEngine.started[0].stopped and not sup.is_live(key)

    asyncio.run(scenario())
