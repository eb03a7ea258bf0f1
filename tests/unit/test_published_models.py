"""Published models (core.published_models): a finished run's output or checkpoint as a version of a named
model set, owned by one account, and the deployment serving it traced back to it."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

import pytest
from sqlalchemy.orm import Session

from tunehouse.core import deployments as dep_svc
from tunehouse.core import published_models as pub
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.registry import register_builtin, register_output
from tunehouse.store.db import Database
from tunehouse.store.models import Checkpoint, Job, Run

_n = count()


def finished_run(s: Session, account: int, state: str = "succeeded") -> Run:
    n = next(_n)
    job = Job(key=f"pj{n:010d}", account_id=account, name="j", created_at=utcnow())
    s.add(job)
    s.flush()
    run = Run(
        key=f"pr{n:010d}",
        account_id=account,
        job_id=job.id,
        version=1,
        base_model="tunehouse-tiny",
        train_mode="sft",
        parameter_scale="lora",
        state=state,
        output_name=f"ft:tiny:{n}",
        created_at=utcnow(),
    )
    s.add(run)
    s.flush()
    if state == "succeeded":
        register_output(
            s, account, run.output_name or "", f"/runs/{n}/model", "lora_adapter", "tunehouse-tiny", run.id
        )
    s.add(Checkpoint(run_id=run.id, step=4, path=f"/runs/{n}/ckpt-4", created_at=utcnow()))
    s.flush()
    return run


@pytest.fixture
def models_dir(tmp_path_factory: pytest.TempPathFactory, database: Database) -> None:
    with database.session() as s:
        register_builtin(s, tmp_path_factory.mktemp("models"))


def test_a_published_run_is_the_first_version_of_a_new_set(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    acct = make_account()
    with database.session() as s:
        pm = pub.publish(s, acct, finished_run(s, acct), "adder", None)
        assert pm.set_key == pm.key and pm.set_name == "adder"
        assert [v.key for v in pub.get_set(s, acct, pm.set_key)] == [pm.key]
        target = pub.target_of(s, acct, pm, "amv-x")
        assert (target.model_name, target.weights_kind) == ("amv-x", "lora_adapter")


def test_a_new_version_of_a_set_is_listed_first(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    acct = make_account()
    with database.session() as s:
        run = finished_run(s, acct)
        first = pub.publish(s, acct, run, "adder", None)
        ckpt = pub.publish(s, acct, run, None, 4, set_key=first.set_key)
        assert [v.key for v in pub.get_set(s, acct, first.set_key)] == [ckpt.key, first.key]
        assert pub.target_of(s, acct, ckpt, "v").weights_path == ckpt_path(s, run)
        assert [r.key for r in s.scalars(pub.sets_query(acct))] == [first.key]


def ckpt_path(s: Session, run: Run) -> str:
    return str(s.query(Checkpoint).filter_by(run_id=run.id, step=4).one().path)


def test_only_a_finished_run_or_an_existing_checkpoint_is_published(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    acct = make_account()
    with database.session() as s:
        with pytest.raises(Conflict):
            pub.publish(s, acct, finished_run(s, acct, state="running"), "a", None)
        with pytest.raises(InvalidParameter) as exc:
            pub.publish(s, acct, finished_run(s, acct), "b", 99)
        assert exc.value.field == "step"


def test_a_set_name_is_taken_once_per_account(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        pub.publish(s, a, finished_run(s, a), "same", None)
        with pytest.raises(Conflict):
            pub.publish(s, a, finished_run(s, a), "same", None)
        pub.publish(s, b, finished_run(s, b), "same", None)


def test_another_accounts_versions_and_sets_are_not_found(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    a, b = make_account(), make_account()
    with database.session() as s:
        pm = pub.publish(s, a, finished_run(s, a), "mine", None)
        with pytest.raises(NotFound):
            pub.get_version(s, b, pm.key)
        with pytest.raises(NotFound):
            pub.get_set(s, b, pm.set_key)
        assert list(s.scalars(pub.sets_query(b))) == []


def test_a_deployment_of_a_version_traces_back_to_it(
    database: Database, make_account: Callable[[], int], models_dir: None
) -> None:
    acct, other = make_account(), make_account()
    with database.session() as s:
        run = finished_run(s, acct)
        final = pub.publish(s, acct, run, "traced", None)
        ckpt = pub.publish(s, acct, run, None, 4, set_key=final.set_key)
        for pm in (final, ckpt):
            dep = dep_svc.create_deployment(s, acct, pub.target_of(s, acct, pm, "x"), endpoint=f"e-{pm.key}")
            found = pub.version_of_deployment(s, dep)
            assert found is not None and found.key == pm.key
        assert dep_svc.get_deployment_by_key(s, acct, dep.key).id == dep.id
        with pytest.raises(NotFound):
            dep_svc.get_deployment_by_key(s, other, dep.key)
