"""Reads of a few indexed rows on the event loop itself (PostgreSQL): the status calls clients poll.

A worker-thread hand-off per poll (wake a thread, pass the GIL there and back) cost about a third of the
poll's CPU; an asynchronous connection waits on the loop's own socket readiness instead, and a slow
database holds only the requests that wait on it. The pool belongs to one event loop and holds autocommit
connections: READ COMMITTED gives each statement its own snapshot, so a read loses nothing without a
transaction, and every read sees the newest committed state.

A read goes through psycopg's libpq binding (`pgconn`) and its row loaders (`Transformer`), not its cursor:
for a one-row poll, the cursor's layers (query conversion, prepare bookkeeping, generator-driven waits,
row makers) cost as much again as the round trip itself (129 against about 60 µs of CPU per read, on the
poll's statement, with the socket kept registered with the loop between reads). Each statement is prepared
once per connection; parameters go as text, typed by the server from the statement; rows load with the
connection's loaders, as the cursor would load them.

Failures are not handled here beyond dropping the connection: callers fall back to the pooled SQLAlchemy
path, which handles disconnects (a PostgreSQL restart) as every other query does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.types.json import set_json_loads
from sqlalchemy.engine import make_url

from tunehouse import json_text

# As many as the read threads overlapped before; a poll holds one for a single round trip.
POOL_SIZE = 8


def conninfo_of(url: str) -> str:
    """libpq's form of a SQLAlchemy PostgreSQL URL (`postgresql+psycopg://…`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# A named parameter as psycopg's cursor spells it; %% is a literal percent sign.
_PARAM = re.compile(r"%\((\w+)\)s|%%")


def positional(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """`sql` with %(name)s parameters as libpq's $1, $2, ... (a repeated name keeps its number), and the
    names in number order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, sql).encode(), tuple(names)


def text_param(value: object) -> bytes | None:
    """A parameter in PostgreSQL's text form: the types a poll's reads pass, and nothing that could be
    spelt differently from the cursor's own."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"a read on the loop takes int, str or None parameters, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value).encode()
    if "\x00" in value:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return value.encode()


class _Link:
    """One pooled connection: psycopg's (for connecting, closing and its adapters), its libpq handle, row
    loaders, and the statements prepared on it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.pg = conn.pgconn
        self.pg.nonblocking = 1
        self.loop = loop
        self.loaders = Transformer(conn)
        self.prepared: dict[bytes, bytes] = {}  # positional SQL -> statement name
        # The socket stays registered for reading while the link lives: adding and removing a reader around
        # every wait cost about as much as the rest of a read's waiting.
        self.fd = self.pg.socket
        self._waiter: asyncio.Future[None] | None = None
        self.broken = False
        loop.add_reader(self.fd, self._readable)

    @property
    def usable(self) -> bool:
        return not self.broken and not self.conn.closed

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return
        # Readable while idle: a notice, or the server ending the session. Take it in now (the poll would
        # report it again and again); a connection it ended is never lent again.
        try:
            self.pg.consume_input()
        except psycopg.OperationalError:
            self.broken = True
        if not self.usable:
            self.forget()

    def forget(self) -> None:
        """Off the loop's poll: before the connection closes (its descriptor may be reused)."""
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.fd = -1

    async def rows(self, sql: bytes, params: list[bytes | None]) -> list[tuple[Any, ...]]:
        name = self.prepared.get(sql)
        if name is None:
            name = f"tunehouse_read_{len(self.prepared)}".encode()
            self.pg.send_prepare(name, sql)
            self._check(await self._results())
            self.prepared[sql] = name
        self.pg.send_query_prepared(name, params)
        result = self._check(await self._results())
        self.loaders.set_pgresult(result)
        return self.loaders.load_rows(0, result.ntuples, tuple)  # type: ignore[no-any-return]

    async def _results(self) -> list[pq.abc.PGresult]:
        """Sends what is queued and collects the statement's results, waiting on the loop for the socket."""
        pg = self.pg
        while pg.flush():
            await self._writable()
            pg.consume_input()
        results = []
        while True:
            pg.consume_input()
            while not pg.is_busy():
                result = pg.get_result()
                if result is None:
                    return results
                results.append(result)
            if self.fd < 0:
                raise psycopg.OperationalError("the connection was closed")
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _writable(self) -> None:
        ready = self.loop.create_future()
        self.loop.add_writer(self.fd, _settle, ready)
        try:
            await ready
        finally:
            self.loop.remove_writer(self.fd)

    @staticmethod
    def _check(results: list[pq.abc.PGresult]) -> pq.abc.PGresult:
        if not results:
            raise psycopg.OperationalError("the server sent no result")
        result = results[-1]
        if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            return result
        sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
        primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or result.error_message
        message = primary.decode(errors="replace").strip() or "the read failed"
        try:
            error = psycopg.errors.lookup(sqlstate)
        except KeyError:
            error = psycopg.DatabaseError
        raise error(message)


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class LoopReads:
    def __init__(self, conninfo: str, loop: asyncio.AbstractEventLoop, size: int = POOL_SIZE) -> None:
        self.conninfo = conninfo
        self.loop = loop
        self._idle: list[_Link] = []
        self._open = 0  # idle and lent
        self._size = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._statements: dict[str, tuple[bytes, tuple[str, ...]]] = {}

    async def fetch(self, sql: str, params: dict[str, Any]) -> Sequence[tuple[Any, ...]]:
        """The statement's rows; raises what psycopg raises, having dropped the connection it used."""
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = positional(sql)
        query, names = statement
        values = [text_param(params[n]) for n in names]
        link = await self._acquire()
        try:
            rows = await link.rows(query, values)
        except BaseException:
            # Its state is unknown (mid-query, or the server gone): never lent again.
            self._drop(link)
            raise
        if self._closed or not link.usable:
            self._drop(link)
        else:
            self._idle.append(link)
            self._wake()
        return rows

    async def _acquire(self) -> _Link:
        while True:
            if self._closed:
                raise psycopg.OperationalError("the read pool is closed")
            while self._idle:
                link = self._idle.pop()
                if link.usable:
                    return link
                self._drop(link)  # the server ended it while it was idle
            if self._open < self._size:
                self._open += 1
                try:
                    conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                    # JSON columns decode as on the SQLAlchemy path, by orjson where it agrees (the stdlib's
                    # decoder was a visible share of a poll: a run's row has five JSON columns).
                    set_json_loads(json_text.loads, conn)
                    return _Link(conn, self.loop)
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

    def _drop(self, link: _Link) -> None:
        self._open -= 1
        link.forget()
        task = self.loop.create_task(_close_quietly(link.conn))
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        self._wake()

    def drop_idle(self) -> None:
        """After a failure: the others may have lost their server too."""
        idle, self._idle = self._idle, []
        for link in idle:
            self._drop(link)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for link in idle:
            link.forget()
            await _close_quietly(link.conn)
        while self._waiters:
            self._wake()


_pending: set[asyncio.Task[None]] = set()


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
