"""Reads of a few indexed rows on the event loop itself (PostgreSQL): the status calls clients poll.

A worker-thread hand-off per poll (wake a thread, pass the GIL there and back) cost about a third of the
poll's CPU; an asynchronous psycopg connection waits on the loop's own socket readiness instead, and a slow
database holds only the requests that wait on it. The pool belongs to one event loop (psycopg's async
connections do) and holds autocommit connections: READ COMMITTED gives each statement its own snapshot,
so a read loses nothing without a transaction, and every read sees the newest committed state.

Failures are not handled here beyond dropping the connection: callers fall back to the pooled SQLAlchemy
path, which handles disconnects (a PostgreSQL restart) as every other query does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy.engine import make_url

# As many as the read threads overlapped before; a poll holds one for a single round trip.
POOL_SIZE = 8


# 19 digits in a row may be an integer beyond 64 bits, which orjson reads as a float (the stdlib: an int).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def json_loads(data: bytes) -> Any:
    """JSON columns as psycopg decodes them for these reads: orjson (the stdlib's decoder was a visible share
    of a poll: a run's row has five JSON columns), the stdlib where orjson could differ (long integers, and
    what it refuses: 1e400, lone surrogates), so a value decodes exactly as on the SQLAlchemy path."""
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def conninfo_of(url: str) -> str:
    """libpq's form of a SQLAlchemy PostgreSQL URL (`postgresql+psycopg://…`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class LoopReads:
    def __init__(self, conninfo: str, loop: asyncio.AbstractEventLoop, size: int = POOL_SIZE) -> None:
        self.conninfo = conninfo
        self.loop = loop
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open = 0  # idle and lent
        self._size = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def fetch(self, sql: str, params: dict[str, Any]) -> Sequence[tuple[Any, ...]]:
        """The statement's rows; raises what psycopg raises, having dropped the connection it used."""
        conn = await self._acquire()
        try:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        except BaseException:
            # Its state is unknown (mid-query, or the server gone): never lent again.
            self._drop(conn)
            raise
        if self._closed or conn.closed:
            self._drop(conn)
        else:
            self._idle.append(conn)
            self._wake()
        return rows

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        while True:
            if self._closed:
                raise psycopg.OperationalError("the read pool is closed")
            if self._idle:
                return self._idle.pop()
            if self._open < self._size:
                self._open += 1
                try:
                    conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                    set_json_loads(json_loads, conn)
                    return conn
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as it was cancelled: the turn passes on
                raise

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open -= 1
        task = self.loop.create_task(_close_quietly(conn))
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        self._wake()

    def drop_idle(self) -> None:
        """After a failure: the others may have lost their server too."""
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for conn in idle:
            await _close_quietly(conn)
        while self._waiters:
            self._wake()


_pending: set[asyncio.Task[None]] = set()


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
