"""Reads on the event loop (PostgreSQL): a bounded pool of one loop's connections, none lent again after
it failed, and a polled rendering that needs more than the view still answered on a real connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, text

from tunehouse.api.context import AppContext
from tunehouse.api.polling import OFFLINE, polled_view
from tunehouse.core.errors import InvalidInput
from tunehouse.store.db import Database
from tunehouse.store.loop_reads import LoopReads, conninfo_of, positional, text_param

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PID = "SELECT pg_backend_pid()"


@pytest.fixture
def pg(database: Database) -> Iterator[Database]:
    if not database.is_postgres:
        pytest.skip("reads on the loop are PostgreSQL's")
    yield database


def on_loop(pg: Database, work: Callable[[LoopReads], Any]) -> Any:
    async def main() -> Any:
        reads = LoopReads(conninfo_of(pg.url), asyncio.get_running_loop(), size=2)
        try:
            return await work(reads)
        finally:
            await reads.close()

    return asyncio.run(main())


def test_concurrent_reads_share_at_most_the_pools_size_of_connections(pg: Database) -> None:
    async def work(reads: LoopReads) -> list[int]:
        rows = await asyncio.gather(
            *(reads.fetch("SELECT pg_backend_pid(), pg_sleep(0.05)", {}) for _ in range(6))
        )
        return [r[0][0] for r in rows]

    pids = on_loop(pg, work)
    assert len(pids) == 6
    assert len(set(pids)) <= 2


def test_a_connection_whose_server_process_ended_is_not_lent_again(pg: Database) -> None:
    async def work(reads: LoopReads) -> tuple[int, int]:
        ((first,),) = await reads.fetch(PID, {})
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        with pytest.raises(psycopg.OperationalError):
            await reads.fetch(PID, {})
        ((second,),) = await reads.fetch(PID, {})
        return first, second

    first, second = on_loop(pg, work)
    assert second != first


def test_sqlite_has_no_reads_on_the_loop(database: Database) -> None:
    if database.is_postgres:
        pytest.skip("SQLite's case")

    async def main() -> LoopReads | None:
        return database.loop_reads()

    assert asyncio.run(main()) is None


def test_the_pool_serves_only_the_loop_it_was_made_on_until_closed(pg: Database) -> None:
    async def first() -> LoopReads | None:
        return pg.loop_reads()

    async def other() -> LoopReads | None:
        return pg.loop_reads()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(first()) is not None
        assert asyncio.run(other()) is None
        loop.run_until_complete(pg.close_loop_reads())
    finally:
        loop.close()
    assert asyncio.run(other()) is not None
    asyncio.run(pg.close_loop_reads())


def test_a_polled_rendering_that_queries_is_answered_on_a_real_connection(pg: Database) -> None:
    ctx = AppContext(settings=None, db=pg, box=None)  # type: ignore[arg-type]
    given: list[object] = []

    def render(conn: Connection, view: object) -> int:
        given.append(conn)
        return int(conn.execute(text("SELECT 41 + 1")).scalar_one())

    async def main() -> int:
        try:
            return await polled_view(ctx, 0, "nosuchrun000", render)
        finally:
            await pg.close_loop_reads()

    assert asyncio.run(main()) == 42
    assert given[0] is OFFLINE and isinstance(given[1], Connection)


@pytest.mark.parametrize(
    "document",
    [
        '{"train_loss": 1.25, "steps": [1, 2, 3], "name": "x\\u00e9", "none": null}',
        '{"big": 18446744073709551616, "negative": -9223372036854775809}',
        '{"beyond_doubles": 1e400}',
        '{"digits": "12345678901234567890"}',
    ],
)
def test_json_columns_read_on_the_loop_decode_as_the_stdlib_decodes_them(pg: Database, document: str) -> None:
    async def work(reads: LoopReads) -> Any:
        ((value,),) = await reads.fetch("SELECT CAST(%(doc)s AS json)", {"doc": document})
        return value

    value = on_loop(pg, work)
    assert value == json.loads(document)
    assert repr(value) == repr(json.loads(document))  # the same types too: an int stays an int


def test_named_parameters_become_libpq_positions_in_order_of_first_use() -> None:
    assert positional("SELECT %(a)s, %(b)s, %(a)s, 7 %% 2") == (b"SELECT $1, $2, $1, 7 % 2", ("a", "b"))


@pytest.mark.parametrize("value", [True, 1.5, b"bytes", ["a"]])
def test_a_parameter_of_a_type_a_poll_does_not_pass_is_refused_before_sending(value: object) -> None:
    with pytest.raises(TypeError):
        text_param(value)


def test_text_with_nul_is_refused_as_the_cursor_refuses_it() -> None:
    with pytest.raises(psycopg.DataError):
        text_param("run\x00")


def test_parameters_are_typed_by_the_server_from_the_statement(pg: Database) -> None:
    async def work(reads: LoopReads) -> Any:
        return await reads.fetch(
            "SELECT %(n)s + 1, %(s)s || '!', CAST(%(none)s AS text) IS NULL, pg_typeof(%(n)s + 1)::text",
            {"n": 41, "s": "é", "none": None},
        )

    assert on_loop(pg, work) == [(42, "é!", True, "integer")]


def test_a_failed_statement_raises_psycopgs_error_for_its_sqlstate_and_the_pool_goes_on(pg: Database) -> None:
    async def work(reads: LoopReads) -> Any:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await reads.fetch("SELECT 1 / %(zero)s", {"zero": 0})
        return await reads.fetch("SELECT 1 / %(one)s", {"one": 1})

    assert on_loop(pg, work) == [(1,)]


def test_a_statement_read_again_runs_prepared_on_its_connection(pg: Database) -> None:
    async def work(reads: LoopReads) -> Any:
        for n in range(3):
            await reads.fetch("SELECT %(n)s::int", {"n": n})
        return await reads.fetch("SELECT count(*) FROM pg_prepared_statements", {})

    # The statement read three times, prepared once, and the count's own.
    assert on_loop(pg, work) == [(2,)]


def test_a_connection_the_server_ends_while_idle_is_noticed_and_replaced(pg: Database) -> None:
    async def work(reads: LoopReads) -> tuple[int, int]:
        ((first,),) = await reads.fetch(PID, {})
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while reads._idle and reads._idle[0].usable:  # the loop hears the server close the idle session
            assert loop.time() < deadline, "the ended session was never noticed"
            await asyncio.sleep(0.01)
        ((second,),) = await reads.fetch(PID, {})  # no failed read first: a fresh connection answers
        return first, second

    first, second = on_loop(pg, work)
    assert second != first


def test_a_read_refused_for_its_own_parameters_leaves_the_pools_connections_alone(pg: Database) -> None:
    ctx = AppContext(settings=None, db=pg, box=None)  # type: ignore[arg-type]

    async def main() -> tuple[int, int]:
        reads = pg.loop_reads()
        assert reads is not None
        try:
            ((before,),) = await reads.fetch(PID, {})
            with pytest.raises(InvalidInput):  # as the threaded path refuses it
                await polled_view(ctx, 0, "run\x00", lambda conn, view: view)
            ((after,),) = await reads.fetch(PID, {})
            return before, after
        finally:
            await pg.close_loop_reads()

    before, after = asyncio.run(main())
    assert after == before
