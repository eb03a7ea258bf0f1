"""Engine, sessions and schema migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from tunehouse.store.loop_reads import LoopReads, conninfo_of
from tunehouse.store.text_guard import refuse_nul_text

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: the PostgreSQL advisory lock under which processes starting together set up the schema.
SETUP_LOCK = 7_201_101


def make_engine(url: str, autocommit: bool = False) -> Engine:
    """`autocommit` (PostgreSQL): every connection of the pool stays in autocommit, for reads only."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets the API read while the scheduler writes; foreign keys are off by default in SQLite.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if autocommit:
        # Set once per connection at connect, not per checkout as an engine's execution_options would (that
        # switch and the rollback on return cost more than the polled calls' query itself).
        engine = create_engine(
            url, pool_size=10, max_overflow=20, isolation_level="AUTOCOMMIT", pool_reset_on_return=None
        )
    else:
        engine = create_engine(url, pool_size=10, max_overflow=20)
    _ping_when_idle(engine)
    return engine


# A connection back in the pool for longer than this is pinged before reuse. One reused sooner was just
# working: pinging it on every checkout (pool_pre_ping) cost a round trip per request.
IDLE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, as pool_pre_ping does it, but only for connections left idle: after
    a PostgreSQL restart a dead one is replaced before use, and the first disconnect seen on a busy one
    invalidates the whole pool (SQLAlchemy's default), so only requests already in flight see it."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        since = record.info.get("checked_in")
        if since is not None and time.monotonic() - since < IDLE_PING_S:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            if not dbapi_conn.autocommit:
                dbapi_conn.rollback()  # end the transaction the ping began, as a checked-in one has none
        except Exception as e:
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise exc.DisconnectionError() from e


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        lock_setup(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def lock_setup(conn: Connection | Session) -> None:
    """Serialise first-start work (migrations, built-in rows) between API workers and schedulers starting
    together; held until the transaction ends. SQLite serialises writers by itself."""
    dialect = conn.get_bind().dialect if isinstance(conn, Session) else conn.dialect
    if dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SETUP_LOCK})


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        refuse_nul_text(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL's READ COMMITTED gives each statement its own snapshot anyway: a read-only request
        # loses nothing in autocommit, and saves the BEGIN and COMMIT round trips.
        reads = self.engine
        if self.is_postgres:
            reads = make_engine(url, autocommit=True)
            refuse_nul_text(reads)
        self._read_sessions = sessionmaker(reads, expire_on_commit=False)
        self._reads = reads
        self._loop_reads: LoopReads | None = None

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """For requests that only read (the status calls clients poll): no transaction on PostgreSQL."""
        with self._read_sessions() as s:
            yield s

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A Core connection for the same reads, without a Session's bookkeeping (the polled status calls)."""
        with self._reads.connect() as conn:
            yield conn

    def loop_reads(self) -> LoopReads | None:
        """The running event loop's pool of asynchronous read connections (PostgreSQL); None on SQLite, or
        from a loop other than the one that first asked (its connections cannot serve another loop)."""
        if not self.is_postgres:
            return None
        loop = asyncio.get_running_loop()
        if self._loop_reads is None:
            self._loop_reads = LoopReads(conninfo_of(self.url), loop)
        return self._loop_reads if self._loop_reads.loop is loop else None

    async def close_loop_reads(self) -> None:
        """Closes that pool, from the loop it belongs to (the app's lifespan ends in it)."""
        reads, self._loop_reads = self._loop_reads, None
        if reads is not None and reads.loop is asyncio.get_running_loop():
            await reads.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._reads is not self.engine:
            self._reads.dispose()
