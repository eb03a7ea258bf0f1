"""A trainer that exited: the run ends as the trainer said, or as its exit code (tunehouse.contract.spec)
says when it could not say anything."""

from __future__ import annotations

import pytest

from tests.unit.scheduler.conftest import Node
from tunehouse.contract import spec as contract
from tunehouse.contract.spec import (
    EXIT_DATA_INVALID,
    EXIT_FAILED,
    EXIT_NO_SPACE,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
)
from tunehouse.core.states import RunState
from tunehouse.store.models import File, Model

# What each failing code means from a trainer that exits with it without a word (it had no room left to say
# why, or it crashed before its event log was open).
SILENT_FAILURES = {
    EXIT_SUCCEEDED: "the trainer exited with code 0",  # success without a model is not one
    EXIT_FAILED: "the trainer exited with code 1",
    EXIT_DATA_INVALID: "the trainer exited with code 2",
    EXIT_NO_SPACE: "no space left on device: the trainer could not write under {run_dir}",
}
# EXIT_STOPPED with no stop asked for: the trainer was interrupted from outside (see test_lost_trainers).
INTERRUPTED = EXIT_STOPPED


def test_every_exit_code_the_contract_defines_is_settled_here() -> None:
    defined = {value for name, value in vars(contract).items() if name.startswith("EXIT_")}

    assert defined == {*SILENT_FAILURES, INTERRUPTED}


@pytest.mark.parametrize("code", sorted(SILENT_FAILURES))
def test_a_trainer_that_exits_without_a_word_fails_the_run_as_its_code_says(node: Node, code: int) -> None:
    rid = node.create()
    node.tick()
    node.trainer(rid).exit(code)

    node.tick()

    run = node.run(rid)
    assert (run.state, run.error) == (RunState.FAILED, SILENT_FAILURES[code].format(run_dir=run.run_dir))
    assert (run.lease_owner, run.losses) == (None, 0)


def test_a_trainer_that_succeeded_registers_its_model_and_the_run_succeeds(node: Node) -> None:
    rid = node.create(output_name="acme-chat")
    trainer = node.started(rid)

    trainer.succeed()
    node.tick()

    run = node.run(rid)
    assert (run.state, run.progress, run.error, run.lease_owner) == (RunState.SUCCEEDED, 100, None, None)
    with node.db.session() as s:
        model = s.get_one(Model, run.output_model_id)
        assert (model.name, model.path, model.source_run_id) == (
            "acme-chat",
            str(trainer.run_dir / "model"),
            rid,
        )
        assert model.base_model == run.base_model
        (results,) = run.extra["result_files"]
        assert s.query(File).filter_by(key=results).one().account_id == run.account_id


def test_a_trainer_that_failed_fails_the_run_with_the_reason_it_gave(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    trainer.error("loss is NaN at step 3", kind="nan")
    trainer.status("failed")
    trainer.exit(EXIT_FAILED)
    node.tick()

    assert (node.run(rid).state, node.run(rid).error) == (RunState.FAILED, "loss is NaN at step 3")


def test_a_trainer_that_failed_without_a_reason_fails_the_run_saying_so(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    trainer.status("failed")
    trainer.exit(EXIT_FAILED)
    node.tick()

    assert (node.run(rid).state, node.run(rid).error) == (RunState.FAILED, "the trainer reported a failure")


def test_invalid_training_data_fails_the_run_with_the_trainers_findings(node: Node) -> None:
    rid = node.create()
    node.tick()
    trainer = node.trainer(rid)

    trainer.status("loading")
    trainer.error("invalid training data:\nline 3: no messages", kind="data")
    trainer.status("failed")
    trainer.exit(EXIT_DATA_INVALID)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.error) == (RunState.FAILED, "invalid training data:\nline 3: no messages")


def test_running_out_of_memory_for_good_fails_the_run_with_the_reason_and_is_not_retried(node: Node) -> None:
    # The trainer halves its micro-batch on OOM by itself; when even one example does not fit it gives up.
    rid = node.create()
    trainer = node.started(rid)

    trainer.error("OutOfMemoryError: CUDA out of memory at micro-batch 1")
    trainer.status("failed")
    trainer.exit(EXIT_FAILED)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.error) == (
        RunState.FAILED,
        "OutOfMemoryError: CUDA out of memory at micro-batch 1",
    )
    assert (run.losses, len(node.host.processes)) == (0, 1)


def test_a_full_disk_the_trainer_could_still_report_fails_the_run_with_its_reason(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)

    trainer.error("no space left on device: checkpoint step-4 needs 2 GB")
    trainer.status("failed")
    trainer.exit(EXIT_NO_SPACE)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.error) == (
        RunState.FAILED,
        "no space left on device: checkpoint step-4 needs 2 GB",
    )


def test_a_crash_without_a_word_fails_the_run_with_the_last_line_the_trainer_wrote_to_stderr(
    node: Node,
) -> None:
    rid = node.create()
    trainer = node.started(rid)
    (trainer.run_dir / "trainer.stderr.log").write_text("Traceback ...\nImportError: no module named x\n\n")

    trainer.exit(EXIT_FAILED)
    node.tick()

    run = node.run(rid)
    assert (run.state, run.error) == (
        RunState.FAILED,
        "the trainer exited with code 1: ImportError: no module named x",
    )


def test_a_trainer_that_finished_its_last_step_before_a_stop_reached_it_succeeds(node: Node) -> None:
    rid = node.create()
    trainer = node.started(rid)
    node.ask(rid, "stop")

    trainer.succeed()
    node.tick()

    assert node.run(rid).state == RunState.SUCCEEDED
