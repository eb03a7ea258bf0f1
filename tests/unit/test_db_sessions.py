"""Sessions of the store: read-only ones for polled status calls, and pooled connections that died idle."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import select, text

from tunehouse.store import db as db_module
from tunehouse.store.db import Database
from tunehouse.store.models import Account

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_read_session_sees_what_a_session_committed(database: Database, make_account) -> None:
    account_id = make_account()
    with database.read_session() as s:
        assert s.scalar(select(Account.id).where(Account.id == account_id)) == account_id


def test_a_read_session_on_postgresql_opens_no_transaction(database: Database) -> None:
    if not database.is_postgres:
        pytest.skip("SQLite starts no transaction for a read in either kind of session")
    with database.read_session() as s:
        s.execute(select(Account.id).limit(1)).all()
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        # No BEGIN was sent, so none needs a COMMIT: the poll costs no extra round trips.
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with database.session() as s:
        s.execute(select(Account.id).limit(1)).all()
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_a_pooled_connection_that_died_while_idle_is_replaced_before_use(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database.is_postgres:
        pytest.skip("only a server connection can be cut")
    with database.session() as s:
        pid = s.scalar(text("SELECT pg_backend_pid()"))
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    monkeypatch.setattr(db_module, "IDLE_PING_S", 0.0)  # every checkout counts as after a long idle
    for opened in (database.session, database.read_session):
        with opened() as s:
            assert s.scalar(text("SELECT pg_backend_pid()")) != pid
