"""Unit-test fixtures: migrated databases on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tunehouse.core.accounts import get_or_create_account
from tunehouse.store.db import Database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def sqlite_database(directory: Path) -> Database:
    db = Database(f"sqlite:///{directory / 'tunehouse.db'}")
    db.migrate()
    return db


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One migrated database per test module and backend; tests keep apart by using their own accounts."""
    if request.param == "sqlite":
        db = sqlite_database(tmp_path_factory.mktemp("sqlite"))
        yield db
        db.dispose()
        return
    name = f"tunehouse_unit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_account(database: Database) -> Callable[[], int]:
    """Creates a fresh account (tenant) in `database` and returns its id."""

    def make() -> int:
        with database.session() as s:
            return get_or_create_account(s, f"acct-{uuid.uuid4().hex[:12]}").id

    return make


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A fresh migrated SQLite database for one test."""
    db = sqlite_database(tmp_path)
    yield db
    db.dispose()
