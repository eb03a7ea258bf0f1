"""The store on SQLite and PostgreSQL: migrations, UTC datetimes, constraints and per-account visibility."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from tests.unit.conftest import PG_ADMIN
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import NotFound
from tunehouse.core.files import get_file, list_files
from tunehouse.core.ids import new_key
from tunehouse.core.jobs import get_job, jobs_query
from tunehouse.core.runs import get_run, runs_query
from tunehouse.store.db import MIGRATIONS
from tunehouse.store.models import Account, Base, Checkpoint, Event, File, Job, Run


def add_job(s, account_id: int) -> Job:
    job = Job(key=new_key(), account_id=account_id, name="store-test", created_at=utcnow())
    s.add(job)
    s.flush()
    return job


def add_run(s, job: Job) -> Run:
    run = Run(
        key=new_key(),
        account_id=job.account_id,
        job_id=job.id,
        version=1,
        base_model="tunehouse-tiny",
        train_mode="sft",
        parameter_scale="lora",
        state="queued",
        created_at=utcnow(),
    )
    s.add(run)
    s.flush()
    return run


def add_file(s, account_id: int, size: int = 10) -> File:
    row = File(
        key=new_key(),
        account_id=account_id,
        filename="train.jsonl",
        purpose="fine-tune",
        bytes=size,
        sha256="0" * 64,
        format="chat",
        rows=1,
        path="/nowhere/train.jsonl",
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


@pytest.fixture
def run_id(database, make_account) -> int:
    with database.session() as s:
        return add_run(s, add_job(s, make_account())).id


# --- migrations ---------------------------------------------------------------------------------------


def test_the_migrations_build_the_tables_columns_and_indexes_the_models_declare(database):
    with database.engine.connect() as conn:
        # Column types are left out: the models use dialect variants and decorators the database cannot echo.
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_again_is_a_no_op_that_keeps_the_data(database, make_account):
    account_id = make_account()

    database.migrate()
    database.migrate()

    with database.session() as s:
        assert s.get(Account, account_id) is not None
        assert s.scalar(text("SELECT count(*) FROM alembic_version")) == 1


# --- datetimes ----------------------------------------------------------------------------------------


def test_aware_datetime_comes_back_as_the_same_instant_in_utc(database):
    shanghai = timezone(timedelta(hours=8))
    written = datetime(2024, 5, 1, 16, 0, 0, 123456, tzinfo=shanghai)
    with database.session() as s:
        acc = Account(name=f"tz-{new_key()}", created_at=written)
        s.add(acc)
        s.flush()
        account_id = acc.id

    with database.session() as s:
        read = s.get_one(Account, account_id).created_at

    assert read.utcoffset() == timedelta(0)
    assert read == datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)


def test_naive_datetime_is_refused_by_the_store(database):
    with pytest.raises(StatementError, match="naive datetime"), database.session() as s:
        s.add(Account(name=f"naive-{new_key()}", created_at=datetime(2024, 5, 1, 8, 0, 0)))
        s.flush()


def test_nullable_datetime_stays_none(database, run_id):
    with database.session() as s:
        assert s.get_one(Run, run_id).finished_at is None


# --- constraints --------------------------------------------------------------------------------------


def test_event_seq_is_unique_per_run(database, run_id):
    with database.session() as s:
        s.add(Event(run_id=run_id, seq=1, time=utcnow(), type="log", payload={}))

    with pytest.raises(IntegrityError), database.session() as s:
        s.add(Event(run_id=run_id, seq=1, time=utcnow(), type="log", payload={"again": True}))
        s.flush()


def test_the_same_event_seq_may_be_used_by_different_runs(database, run_id, make_account):
    with database.session() as s:
        other = add_run(s, add_job(s, make_account())).id
        s.add(Event(run_id=run_id, seq=1, time=utcnow(), type="log", payload={}))
        s.add(Event(run_id=other, seq=1, time=utcnow(), type="log", payload={}))

    with database.session() as s:
        count = s.scalar(select(func.count()).select_from(Event).where(Event.run_id.in_([run_id, other])))
    assert count == 2


def test_checkpoint_step_is_unique_per_run(database, run_id):
    with database.session() as s:
        s.add(Checkpoint(run_id=run_id, step=10, path="a", metrics={}, created_at=utcnow()))

    with pytest.raises(IntegrityError), database.session() as s:
        s.add(Checkpoint(run_id=run_id, step=10, path="b", metrics={}, created_at=utcnow()))
        s.flush()


def test_foreign_keys_are_enforced(database):
    with pytest.raises(IntegrityError), database.session() as s:
        s.add(Job(key=new_key(), account_id=987654321, name="orphan", created_at=utcnow()))
        s.flush()


# --- column types -------------------------------------------------------------------------------------


def test_json_columns_round_trip_nested_values(database, run_id):
    value = {"lr": 3e-5, "layers": [1, 2, {"deep": None}], "name": "中文", "flag": True}
    with database.session() as s:
        s.get_one(Run, run_id).hyperparameters = value

    with database.session() as s:
        assert s.get_one(Run, run_id).hyperparameters == value


def test_file_sizes_beyond_32_bits_round_trip(database, make_account):
    with database.session() as s:
        file_id = add_file(s, make_account(), size=5 * 2**30).id

    with database.session() as s:
        assert s.get_one(File, file_id).bytes == 5 * 2**30


# --- per-account visibility ---------------------------------------------------------------------------


def test_get_job_finds_the_accounts_own_job(database, make_account):
    owner = make_account()
    with database.session() as s:
        key = add_job(s, owner).key

    with database.session() as s:
        assert get_job(s, owner, key).key == key


def test_get_job_of_another_accounts_job_raises_not_found(database, make_account):
    owner, stranger = make_account(), make_account()
    with database.session() as s:
        job = add_job(s, owner)

    with pytest.raises(NotFound), database.session() as s:
        get_job(s, stranger, job.key)
    with pytest.raises(NotFound), database.session() as s:
        get_job(s, stranger, int_id=job.id)


def test_get_run_of_another_accounts_run_raises_not_found(database, make_account):
    owner, stranger = make_account(), make_account()
    with database.session() as s:
        run = add_run(s, add_job(s, owner))

    with database.session() as s:
        assert get_run(s, owner, run.key).id == run.id
    with pytest.raises(NotFound), database.session() as s:
        get_run(s, stranger, run.key)


def test_get_file_of_another_accounts_file_raises_not_found(database, make_account):
    owner, stranger = make_account(), make_account()
    with database.session() as s:
        row = add_file(s, owner)

    with database.session() as s:
        assert get_file(s, owner, row.key).id == row.id
    with pytest.raises(NotFound), database.session() as s:
        get_file(s, stranger, int_id=row.id)


def test_listings_hold_only_the_accounts_own_jobs_runs_and_files(database, make_account):
    mine, theirs = make_account(), make_account()
    with database.session() as s:
        my_run = add_run(s, add_job(s, mine))
        my_file = add_file(s, mine)
        add_run(s, add_job(s, theirs))
        add_file(s, theirs)

    with database.session() as s:
        assert [j.id for j in s.scalars(jobs_query(mine))] == [my_run.job_id]
        assert [r.id for r in s.scalars(runs_query(mine))] == [my_run.id]
        assert [f.id for f in list_files(s, mine)] == [my_file.id]


# --- 0007: the output name leaves runs.extra for a column of its own -----------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    name = f"tunehouse_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _to(engine, revision: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_0007_moves_each_runs_output_name_from_extra_to_its_column_and_back(empty_url):
    engine = create_engine(empty_url)
    _to(engine, "0006")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (name, created_at) VALUES ('m', :t)"), {"t": now})
        conn.execute(
            text(
                "INSERT INTO jobs (key, account_id, name, description, hyperparameters, created_at) "
                "VALUES ('j1', 1, 'job', '', '{}', :t)"
            ),
            {"t": now},
        )
        for key, extra in (("named", {"output_name": "adder", "keep": 1}), ("older", {"keep": 2})):
            conn.execute(
                text(
                    "INSERT INTO runs (key, account_id, job_id, version, base_model, train_mode,"
                    " parameter_scale, hyperparameters, dataset, extra, state, progress, step, total_steps,"
                    " metrics, stop_requested, attempts, losses, handle, last_event_seq, created_at)"
                    " VALUES (:k, 1, 1, :v, 'tunehouse-tiny', 'sft', 'lora', '{}', '{}', :e, 'queued', 0, 0,"
                    " 0, '{}', false, 0, 0, '{}', 0, :t)"
                ),
                {"k": key, "v": 1 if key == "named" else 2, "e": json.dumps(extra), "t": now},
            )

    _to(engine, "0007")
    with Session(engine) as s:
        named = s.scalar(select(Run).where(Run.key == "named"))
        older = s.scalar(select(Run).where(Run.key == "older"))
        assert (named.output_name, named.extra) == ("adder", {"keep": 1})
        assert (older.output_name, older.extra) == (None, {"keep": 2})

    _to(engine, "0006", down=True)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT key, extra FROM runs")).all())
    loaded = {k: v if isinstance(v, dict) else json.loads(v) for k, v in rows.items()}
    assert loaded == {"named": {"keep": 1, "output_name": "adder"}, "older": {"keep": 2}}
    engine.dispose()
