"""A run asks for N GPUs: the scheduler reserves N of the node's GPUs for it, or fails it with the reason
when this node can never hold it; on a node without GPUs, TUNEHOUSE_CPU_RANKS bounds the CPU ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tunehouse.config import Settings
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.files import upload_file
from tunehouse.core.jobs import create_job
from tunehouse.core.registry import add_base_model
from tunehouse.core.runs import MIN_EXAMPLES, DatasetChoice, create_run
from tunehouse.core.states import RunState
from tunehouse.executors.local import LocalExecutor, rank_failure, trainer_command
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.store.db import Database
from tunehouse.store.models import Run

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def settings(home: Path, gpus: tuple[str, ...] = (), cpu_ranks: int = 1) -> Settings:
    return Settings(home=home, database_url="", max_running=4, public_url="", gpus=gpus, cpu_ranks=cpu_ranks)


def queue(db: Database, home: Path, *asks: int) -> list[int]:
    model_dir = home / "base-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    with db.session() as s:
        add_base_model(s, "acme-base", model_dir)
        account = get_or_create_account(s, "gpu-tests")
        data = (json.dumps(CHAT_ROW) + "\n").encode() * MIN_EXAMPLES  # the fewest a run trains on
        file = upload_file(s, settings(home).files_dir, account.id, "t.jsonl", data, "fine-tune")
        job = create_job(s, account.id, "gpus", model="acme-base", train_mode="sft")
        runs = [create_run(s, job, "lora", {}, [DatasetChoice(file)], gpus=n) for n in asks]
        return [r.id for r in runs]


def runs(db: Database, ids: list[int]) -> list[Any]:
    with db.session() as s:
        return [(r.state, r.handle.get("gpu"), r.error) for r in (s.get_one(Run, i) for i in ids)]


def test_a_run_gets_as_many_gpus_as_it_asks_for_and_the_next_waits_its_turn(sqlite_db, tmp_path) -> None:
    ids = queue(sqlite_db, tmp_path, 2, 1, 1)
    Scheduler(sqlite_db, settings(tmp_path, ("0", "1", "2")), LocalExecutor()).claim()
    # First come, first served: the third run waits although TUNEHOUSE_MAX_RUNNING would allow it.
    assert runs(sqlite_db, ids) == [
        (RunState.RUNNING, "0,1", None),
        (RunState.RUNNING, "2", None),
        (RunState.QUEUED, None, None),
    ]


def test_the_gpus_a_run_holds_are_not_lent_again(sqlite_db, tmp_path) -> None:
    first, second = queue(sqlite_db, tmp_path, 2, 2)
    scheduler = Scheduler(sqlite_db, settings(tmp_path, ("0", "1", "2")), LocalExecutor())
    scheduler.claim()
    scheduler.claim()
    assert runs(sqlite_db, [first, second]) == [
        (RunState.RUNNING, "0,1", None),
        (RunState.QUEUED, None, None),
    ]


def test_a_run_asking_for_more_gpus_than_the_node_has_fails_with_the_reason(sqlite_db, tmp_path) -> None:
    (big,) = queue(sqlite_db, tmp_path, 3)
    Scheduler(sqlite_db, settings(tmp_path, ("0", "1")), LocalExecutor(), owner="gpu-a").claim()
    ((state, _, error),) = runs(sqlite_db, [big])
    assert state == RunState.FAILED
    assert (
        error == "cannot be placed on gpu-a: the run asks for 3 GPUs and this node lends 2 (TUNEHOUSE_GPUS)"
    )


def test_without_gpus_a_run_trains_on_as_many_cpu_ranks_as_the_node_allows(sqlite_db, tmp_path) -> None:
    two, three = queue(sqlite_db, tmp_path, 2, 3)
    Scheduler(sqlite_db, settings(tmp_path, cpu_ranks=2), LocalExecutor()).claim()
    (ok, _, _), (state, _, error) = runs(sqlite_db, [two, three])
    assert ok == RunState.RUNNING
    assert state == RunState.FAILED and "at most 2 CPU process(es) (TUNEHOUSE_CPU_RANKS)" in error


def test_the_spec_carries_the_gpus_the_run_asked_for(sqlite_db, tmp_path) -> None:
    two, one = queue(sqlite_db, tmp_path, 2, 1)
    scheduler = Scheduler(sqlite_db, settings(tmp_path), LocalExecutor())
    with sqlite_db.session() as s:
        assert [scheduler._spec(s, s.get_one(Run, i))[0].gpus for i in (two, one)] == [2, 1]


@pytest.mark.parametrize("bad", [0, 65, 1.5, True, "2"])
def test_a_gpu_count_outside_one_to_64_is_an_invalid_parameter(sqlite_db, tmp_path, bad: Any) -> None:
    with pytest.raises(InvalidParameter) as err:
        queue(sqlite_db, tmp_path, bad)
    assert err.value.field == "gpus"


def test_several_ranks_launch_under_torchrun_with_this_interpreter_on_loopback(tmp_path) -> None:
    spec = tmp_path / "spec.json"
    assert trainer_command(spec, 1, "k") == [sys.executable, "-m", "tunehouse.trainer", str(spec)]
    cmd = trainer_command(spec, 4, "k")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and Path(cmd[0]).is_absolute()
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:")
    assert cmd[-3:] == ["-m", "tunehouse.trainer", str(spec)]


SUMMARY = """rank 1: RuntimeError: boom
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tunehouse.trainer FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_13:44:41
  host      : localhost
  rank      : {rank} (local_rank: {rank})
  exitcode  : {code} (pid: 27178){extra}
  error_file: <N/A>
  traceback : {tb}
============================================================
"""


def test_the_failed_rank_and_its_reason_are_read_from_torchruns_summary() -> None:
    killed = SUMMARY.format(
        rank=0, code=-9, extra="  (SIGKILL)", tb="Signal 9 (SIGKILL) received by PID 27178"
    )
    failure = rank_failure(killed)
    assert failure is not None and (failure.rank, failure.exitcode) == (0, -9)
    assert failure.detail == "Signal 9 (SIGKILL) received by PID 27178"
    raised = SUMMARY.format(rank=1, code=1, extra="", tb="To enable traceback see: https://pytorch.org")
    failure = rank_failure(raised)
    assert failure is not None and (failure.rank, failure.detail) == (1, "RuntimeError: boom")
    assert rank_failure("a plain crash\n") is None
