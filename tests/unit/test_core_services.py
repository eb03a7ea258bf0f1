"""Core services on SQLite: jobs, runs, stopping and deleting, trainer events, credentials."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunehouse.core.accounts import (
    find_api_key_account,
    find_signing_secret,
    get_or_create_account,
    issue_keys,
    set_run_limit,
)
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, FileInUse, InvalidParameter, NameTaken, NotFound, QuotaExceeded
from tunehouse.core.events import apply_trainer_events, events_page
from tunehouse.core.files import delete_file, get_file, upload_file
from tunehouse.core.jobs import create_job, delete_job, get_job
from tunehouse.core.registry import register_builtin, register_output, run_by_output_name
from tunehouse.core.runs import (
    MIN_EXAMPLES,
    DatasetChoice,
    checkpoints,
    create_run,
    delete_run,
    epoch_save_steps,
    estimated_finish,
    get_run,
    move,
    request_pause,
    request_stop,
    resume,
    too_few_examples,
)
from tunehouse.core.secrets_box import SecretBox
from tunehouse.core.states import RunState
from tunehouse.store.models import Account, Credential, File, Job, Run

TINY = "tunehouse-tiny"
CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
TEXT_ROW = {"text": "Plain text for continued pretraining."}


@pytest.fixture
def s(sqlite_db, tmp_path: Path) -> Iterator[Session]:
    with sqlite_db.session() as session:
        register_builtin(session, tmp_path / "models")
        yield session


@pytest.fixture
def account(s: Session) -> Account:
    return get_or_create_account(s, "alice")


@pytest.fixture
def upload(s: Session, tmp_path: Path, account: Account) -> Callable[..., File]:
    def upload_rows(row: dict, n: int = MIN_EXAMPLES) -> File:
        data = "".join(json.dumps(row) + "\n" for _ in range(n)).encode()
        return upload_file(s, tmp_path / "files", account.id, "train.jsonl", data, "fine-tune")

    return upload_rows


@pytest.fixture
def chat_file(upload) -> File:
    return upload(CHAT_ROW)


@pytest.fixture
def text_file(upload) -> File:
    return upload(TEXT_ROW)


@pytest.fixture
def job(s: Session, account: Account) -> Job:
    return create_job(s, account.id, "faq bot", model=TINY, train_mode="sft")


@pytest.fixture
def make_run(s: Session, job: Job, chat_file: File) -> Callable[..., Run]:
    def make(**kwargs) -> Run:
        args = {"method": "lora", "hyperparameters": {}, "datasets": [DatasetChoice(chat_file)], **kwargs}
        return create_run(s, job, **args)

    return make


def invalid(call: Callable[[], object]) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        call()
    return info.value


# --- create_job ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", "x" * 20, "问答机器人" * 4])
def test_create_job_accepts_names_of_2_to_20_characters(s, account, name):
    assert create_job(s, account.id, name).name == name


@pytest.mark.parametrize("name", ["", "a", "x" * 21])
def test_create_job_rejects_names_shorter_than_2_or_longer_than_20(s, account, name):
    assert invalid(lambda: create_job(s, account.id, name)).field == "name"


def test_create_job_accepts_a_500_character_description(s, account):
    assert len(create_job(s, account.id, "bot", description="d" * 500).description) == 500


def test_create_job_rejects_a_description_over_500_characters(s, account):
    assert invalid(lambda: create_job(s, account.id, "bot", description="d" * 501)).field == "description"


def test_create_job_rejects_an_unknown_base_model(s, account):
    assert invalid(lambda: create_job(s, account.id, "bot", model="no-such-model")).field == "model"


def test_create_job_rejects_an_unsupported_train_mode(s, account):
    err = invalid(lambda: create_job(s, account.id, "bot", model=TINY, train_mode="kto"))

    assert err.field == "train_mode"


def test_create_job_gives_the_job_a_key_and_an_aware_creation_time(s, account):
    job = create_job(s, account.id, "bot")

    assert len(job.key) == 12
    assert job.created_at.tzinfo is not None
    assert get_job(s, account.id, job.key) is job


# --- create_run ---------------------------------------------------------------------------------------


def test_create_run_queues_the_run_with_defaults_filled(make_run):
    run = make_run(hyperparameters={"epochs": 2})

    assert run.state == RunState.QUEUED
    assert run.hyperparameters["epochs"] == 2
    assert run.hyperparameters["lora_rank"] == 8


def test_create_run_records_a_status_queued_event(s, make_run):
    run = make_run()

    assert [(e.seq, e.type, e.payload) for e in events_page(s, run)] == [(1, "status", {"state": "queued"})]


def test_runs_of_a_job_are_numbered_from_1(make_run):
    assert [make_run().version, make_run().version] == [1, 2]


def test_create_run_rejects_invalid_hyperparameters_naming_the_key(s, make_run, job):
    assert invalid(lambda: make_run(hyperparameters={"epochs": 0})).field == "epochs"
    assert s.scalars(select(Run).where(Run.job_id == job.id)).all() == []


def test_create_run_keeps_unknown_hyperparameters_aside(make_run):
    run = make_run(hyperparameters={"Packing": True})

    assert "Packing" not in run.hyperparameters
    assert run.extra["unknown_hyperparameters"] == {"Packing": True}


def test_job_hyperparameters_are_defaults_that_the_run_may_override(s, account, chat_file):
    job = create_job(s, account.id, "bot", model=TINY, train_mode="sft", hyperparameters={"epochs": 7})

    inherited = create_run(s, job, "lora", {}, [DatasetChoice(chat_file)])
    overridden = create_run(s, job, "lora", {"epochs": 2}, [DatasetChoice(chat_file)])

    assert (inherited.hyperparameters["epochs"], overridden.hyperparameters["epochs"]) == (7, 2)


@pytest.mark.parametrize("split_ratio", [0, 20])
def test_create_run_accepts_split_ratios_from_0_to_20(make_run, split_ratio):
    assert make_run(split_ratio=split_ratio).dataset["split_ratio"] == split_ratio


@pytest.mark.parametrize("split_ratio", [-1, 51, 2.5, True])
def test_create_run_rejects_split_ratios_outside_0_to_50_or_not_integers(make_run, split_ratio):
    assert invalid(lambda: make_run(split_ratio=split_ratio)).field == "split_ratio"


def test_create_run_requires_at_least_one_dataset(make_run):
    assert invalid(lambda: make_run(datasets=[])).field == "datasets"


def test_create_run_rejects_a_text_file_for_sft(make_run, text_file):
    assert invalid(lambda: make_run(datasets=[DatasetChoice(text_file)])).field == "datasets"


def test_create_run_rejects_a_chat_file_for_pretrain(s, account, chat_file):
    job = create_job(s, account.id, "bot", model=TINY, train_mode="pretrain")

    err = invalid(lambda: create_run(s, job, "lora", {}, [DatasetChoice(chat_file)]))

    assert err.field == "datasets"


def test_create_run_accepts_a_text_file_for_pretrain(s, account, text_file):
    job = create_job(s, account.id, "bot", model=TINY, train_mode="pretrain")

    assert create_run(s, job, "full", {}, [DatasetChoice(text_file)]).train_mode == "pretrain"


def test_first_run_of_a_job_created_without_a_model_pins_the_jobs_model_and_mode(s, account, chat_file):
    job = create_job(s, account.id, "bot")

    create_run(s, job, "lora", {}, [DatasetChoice(chat_file)], model=TINY, train_mode="sft")

    assert (job.base_model, job.train_mode) == (TINY, "sft")


def test_run_of_a_job_without_a_model_must_name_one(s, account, chat_file):
    job = create_job(s, account.id, "bot")

    err = invalid(lambda: create_run(s, job, "lora", {}, [DatasetChoice(chat_file)], train_mode="sft"))

    assert err.field == "model"


def test_run_may_not_change_the_jobs_train_mode(make_run):
    assert invalid(lambda: make_run(train_mode="pretrain")).field == "train_mode"


# --- stopping -----------------------------------------------------------------------------------------


def test_stopping_a_queued_run_ends_it_stopped_at_once(s, make_run):
    run = make_run()

    assert request_stop(s, run) is True
    assert run.state == RunState.STOPPED
    assert run.finished_at is not None
    assert events_page(s, run)[-1].payload == {"state": "stopped"}


def test_stopping_a_running_run_moves_it_to_stopping_and_flags_the_request(s, make_run):
    run = make_run()
    move(s, run, RunState.RUNNING)

    assert request_stop(s, run) is True
    assert run.state == RunState.STOPPING
    assert run.stop_requested is True
    assert run.finished_at is None


def test_stopping_a_run_that_is_already_stopping_keeps_it_stopping(s, make_run):
    run = make_run()
    move(s, run, RunState.RUNNING)
    request_stop(s, run)

    assert request_stop(s, run) is True
    assert run.state == RunState.STOPPING


@pytest.mark.parametrize("end", [RunState.SUCCEEDED, RunState.FAILED])
def test_stopping_a_run_that_has_ended_returns_false_and_changes_nothing(s, make_run, end):
    run = make_run()
    move(s, run, RunState.RUNNING)
    move(s, run, end)

    assert request_stop(s, run) is False
    assert run.state == end
    assert run.stop_requested is False


def test_stopping_a_stopped_run_again_returns_false(s, make_run):
    run = make_run()
    request_stop(s, run)

    assert request_stop(s, run) is False


# --- deleting -----------------------------------------------------------------------------------------


def test_deleting_a_run_that_has_not_ended_is_a_conflict(s, make_run):
    with pytest.raises(Conflict):
        delete_run(s, make_run())


def test_deleted_run_is_no_longer_found(s, make_run, account):
    run = make_run()
    request_stop(s, run)

    delete_run(s, run)

    with pytest.raises(NotFound):
        get_run(s, account.id, run.key)


def test_deleting_a_job_with_a_live_run_is_a_conflict(s, make_run, job):
    run = make_run()
    move(s, run, RunState.RUNNING)

    with pytest.raises(Conflict):
        delete_job(s, job)


def test_deleting_a_job_whose_runs_ended_removes_the_job_and_its_runs(s, make_run, job, account):
    run = make_run()
    request_stop(s, run)

    delete_job(s, job)

    with pytest.raises(NotFound):
        get_job(s, account.id, job.key)
    with pytest.raises(NotFound):
        get_run(s, account.id, run.key)


# --- the account's limit on active runs ----------------------------------------------------------------


def test_an_account_without_a_limit_may_queue_any_number_of_runs(s, make_run, account):
    assert account.max_active_runs is None
    assert len([make_run() for _ in range(5)]) == 5


def test_a_run_beyond_the_accounts_limit_is_refused_and_not_created(s, make_run, account, job):
    set_run_limit(s, account, 2)
    make_run()
    move(s, make_run(), RunState.RUNNING)

    with pytest.raises(QuotaExceeded) as refused:
        make_run()

    assert refused.value.limit == 2 and "2 queued or running at once" in refused.value.message
    assert s.scalar(select(func.count()).select_from(Run).where(Run.job_id == job.id)) == 2


def test_ended_paused_and_deleted_runs_do_not_count_against_the_limit(s, make_run, account):
    set_run_limit(s, account, 1)
    stopped = make_run()
    request_stop(s, stopped)
    deleted = make_run()
    request_stop(s, deleted)
    delete_run(s, deleted)
    paused = make_run()
    request_pause(s, paused)

    assert make_run().state == RunState.QUEUED


def test_resuming_a_paused_run_counts_against_the_limit(s, make_run, account):
    paused = make_run()
    request_pause(s, paused)
    make_run()
    set_run_limit(s, account, 1)

    with pytest.raises(QuotaExceeded):
        resume(s, paused)
    assert paused.state == RunState.PAUSED


def test_one_accounts_runs_do_not_count_against_anothers_limit(s, make_run, tmp_path):
    bob = get_or_create_account(s, "bob")
    set_run_limit(s, bob, 1)
    make_run()
    make_run()
    bobs_job = create_job(s, bob.id, "bob bot", model=TINY, train_mode="sft")
    rows = (json.dumps(CHAT_ROW) + "\n").encode() * MIN_EXAMPLES
    data = upload_file(s, tmp_path / "files", bob.id, "t.jsonl", rows, "fine-tune")
    assert create_run(s, bobs_job, "lora", {}, [DatasetChoice(data)]).state == RunState.QUEUED


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_below_one_is_refused(s, account, limit):
    assert invalid(lambda: set_run_limit(s, account, limit)).field == "max_active_runs"


# --- trainer events -----------------------------------------------------------------------------------

TRAINER_EVENTS = [
    {"seq": 1, "time": "2024-05-01T08:00:01Z", "type": "progress",
     "payload": {"step": 5, "total_steps": 10, "percent": 50, "epoch": 0.5}},
    {"seq": 2, "time": "2024-05-01T08:00:02Z", "type": "metrics", "payload": {"train_loss": 1.25}},
    {"seq": 3, "time": "2024-05-01T08:00:03Z", "type": "checkpoint",
     "payload": {"step": 5, "path": "/runs/x/checkpoint-5", "metrics": {"train_loss": 1.25}}},
]  # fmt: skip


def trainer_event_types(s: Session, run: Run) -> list[str]:
    return [e.type for e in events_page(s, run)][1:]  # the first is the server's "status queued"


def test_trainer_events_update_progress_step_and_metrics(s, make_run):
    run = make_run()

    apply_trainer_events(s, run, TRAINER_EVENTS)

    assert (run.progress, run.step, run.total_steps) == (50, 5, 10)
    assert run.metrics == {"epoch": 0.5, "train_loss": 1.25}
    assert run.last_event_seq == 3


def test_trainer_events_are_stored_after_the_servers_own_events_with_their_times(s, make_run):
    run = make_run()

    apply_trainer_events(s, run, TRAINER_EVENTS)

    stored = events_page(s, run)
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert stored[1].time == datetime(2024, 5, 1, 8, 0, 1, tzinfo=UTC)


def test_applying_the_same_trainer_events_twice_stores_them_once(s, make_run):
    run = make_run()
    apply_trainer_events(s, run, TRAINER_EVENTS)

    again = apply_trainer_events(s, run, TRAINER_EVENTS)

    assert again == []
    assert trainer_event_types(s, run) == ["progress", "metrics", "checkpoint"]
    assert len(checkpoints(s, run)) == 1


def test_an_overlapping_batch_applies_only_the_new_events(s, make_run):
    run = make_run()
    apply_trainer_events(s, run, TRAINER_EVENTS[:2])

    fresh = apply_trainer_events(s, run, TRAINER_EVENTS)

    assert [e["seq"] for e in fresh] == [3]
    assert trainer_event_types(s, run) == ["progress", "metrics", "checkpoint"]


def test_checkpoint_event_inserts_one_checkpoint_per_step(s, make_run):
    run = make_run()
    repeat = {**TRAINER_EVENTS[2], "seq": 4}

    apply_trainer_events(s, run, [*TRAINER_EVENTS, repeat])

    [cp] = checkpoints(s, run)
    assert (cp.step, cp.path, cp.metrics) == (5, "/runs/x/checkpoint-5", {"train_loss": 1.25})


def test_progress_percent_is_clamped_to_100(s, make_run):
    run = make_run()

    apply_trainer_events(s, run, [{"seq": 1, "type": "progress", "payload": {"percent": 140}}])

    assert run.progress == 100


def test_trainer_error_event_records_the_reason_on_the_run(s, make_run):
    run = make_run()

    apply_trainer_events(s, run, [{"seq": 1, "type": "error", "payload": {"reason": "out of memory"}}])

    assert run.error == "out of memory"


def test_the_trainers_status_reports_are_kept_apart_from_the_runs_state_changes(s, make_run):
    run = make_run()
    said = [{"seq": 1, "type": "status", "payload": {"state": "succeeded"}}]

    fresh = apply_trainer_events(s, run, said)

    assert fresh == said  # the scheduler still reads what the trainer said
    assert trainer_event_types(s, run) == ["trainer_status"]
    assert run.state == "queued"  # only the server moves the run


# --- credentials --------------------------------------------------------------------------------------


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(b"d2VsbC1rbm93bi10ZXN0LWtleS0wMDAwMDAwMDAwMDA=")


def test_issued_secret_key_is_stored_encrypted(s, box, account):
    keys = issue_keys(s, box, account)

    cred = s.scalar(select(Credential).where(Credential.lookup == keys.access_key))
    assert cred.secret_enc
    assert keys.secret_key not in cred.secret_enc


def test_signing_secret_is_found_by_access_key(s, box, account):
    keys = issue_keys(s, box, account)

    assert find_signing_secret(s, box, keys.access_key) == (account, keys.secret_key)


def test_unknown_access_key_has_no_signing_secret(s, box, account):
    issue_keys(s, box, account)

    assert find_signing_secret(s, box, "0" * 32) is None


def test_revoked_access_key_has_no_signing_secret(s, box, account):
    keys = issue_keys(s, box, account)
    s.scalar(select(Credential).where(Credential.lookup == keys.access_key)).revoked_at = utcnow()

    assert find_signing_secret(s, box, keys.access_key) is None


def test_api_key_is_stored_only_as_its_sha256(s, box, account):
    keys = issue_keys(s, box, account)

    stored = [(c.lookup, c.secret_enc, c.label) for c in s.scalars(select(Credential))]
    assert (hashlib.sha256(keys.api_key.encode()).hexdigest(), None) in [(lk, enc) for lk, enc, _ in stored]
    assert not any(keys.api_key in str(v) for row in stored for v in row)


def test_api_key_resolves_to_its_account(s, box, account):
    keys = issue_keys(s, box, account)

    assert find_api_key_account(s, keys.api_key) == account


def test_unknown_api_key_resolves_to_no_account(s, box, account):
    keys = issue_keys(s, box, account)

    assert find_api_key_account(s, keys.api_key + "x") is None


def test_a_rejected_upload_leaves_no_file_behind(s, account, tmp_path):
    from tunehouse.core.files import upload_file

    files_dir = tmp_path / "rejected"
    with pytest.raises(InvalidParameter):
        upload_file(s, files_dir, account.id, "bad.jsonl", b'{"messages": 3}\n', "fine-tune")
    assert list(files_dir.iterdir()) == []


def test_an_output_name_held_by_a_live_run_cannot_be_taken_again(make_run):
    make_run(output_name="my-model")
    with pytest.raises(Conflict):
        make_run(output_name="my-model")


def test_an_output_name_may_contain_braces(make_run):
    assert make_run(output_name="odd{name}").output_name == "odd{name}"


def test_an_expired_file_is_no_longer_found(s, account, tmp_path):
    from datetime import timedelta

    from tunehouse.core.files import get_file, upload_file

    row = upload_file(
        s,
        tmp_path / "f",
        account.id,
        "a.jsonl",
        b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n',
        "fine-tune",
        expires_after_s=3600,
    )
    assert get_file(s, account.id, key=row.key).key == row.key
    row.expires_at = row.created_at - timedelta(seconds=1)
    s.flush()
    with pytest.raises(NotFound):
        get_file(s, account.id, key=row.key)


# --- platform rules: output names ---------------------------------------------------------------------


def test_an_output_name_that_is_a_base_models_name_is_refused_and_no_run_is_created(s, make_run, job):
    with pytest.raises(NameTaken) as info:
        make_run(output_name=TINY)
    assert info.value.name == TINY and "already exists" in info.value.message
    assert s.scalar(select(func.count()).select_from(Run).where(Run.job_id == job.id)) == 0


def test_an_output_name_of_one_of_the_accounts_models_is_refused(s, make_run, account):
    done = make_run(output_name="adder")
    move(s, done, RunState.STOPPED)
    register_output(s, account.id, "adder", "/nowhere", "lora_adapter", TINY, done.id)
    with pytest.raises(NameTaken):
        make_run(output_name="adder")


def test_another_accounts_model_name_is_free_to_take(s, make_run, tmp_path):
    bob = get_or_create_account(s, "bob")
    register_output(s, bob.id, "shared-name", "/nowhere", "lora_adapter", TINY, 0)
    assert make_run(output_name="shared-name").output_name == "shared-name"


def test_a_name_held_by_a_run_is_free_again_once_the_run_ended_without_a_model(s, make_run):
    first = make_run(output_name="retry-me")
    move(s, first, RunState.STOPPED)
    assert make_run(output_name="retry-me").output_name == "retry-me"


def test_a_generated_output_name_is_stored_in_its_own_column(make_run):
    run = make_run()
    assert run.output_name == f"{TINY}-ft-{run.key}" and "output_name" not in run.extra


def test_an_output_name_longer_than_the_models_table_allows_is_refused(make_run):
    assert invalid(lambda: make_run(output_name="m" * 129)).field == "output_name"


def test_the_run_of_an_output_name_is_found_by_name_within_the_account(s, make_run, account):
    run = make_run(output_name="find-me")
    assert run_by_output_name(s, account.id, "find-me") is run
    assert run_by_output_name(s, account.id, "nobody") is None
    assert run_by_output_name(s, get_or_create_account(s, "carol").id, "find-me") is None


# --- platform rules: files in use ---------------------------------------------------------------------


def test_a_file_a_queued_run_trains_on_cannot_be_deleted(s, make_run, chat_file, account):
    run = make_run()
    with pytest.raises(FileInUse) as info:
        delete_file(s, chat_file)
    assert [r.key for r in info.value.runs] == [run.key] and run.key in info.value.message
    assert get_file(s, account.id, key=chat_file.key) is chat_file


@pytest.mark.parametrize("state", [RunState.RUNNING, RunState.PAUSED, RunState.STOPPING])
def test_a_file_a_run_that_has_not_ended_uses_cannot_be_deleted(s, make_run, chat_file, state):
    run = make_run()
    run.state = state
    with pytest.raises(FileInUse):
        delete_file(s, chat_file)


def test_a_validation_file_of_a_live_run_cannot_be_deleted(s, make_run, upload):
    held_out = upload(CHAT_ROW)
    make_run(validation=[DatasetChoice(held_out)])
    with pytest.raises(FileInUse):
        delete_file(s, held_out)


def test_a_file_whose_runs_all_ended_can_be_deleted(s, make_run, chat_file, account):
    move(s, make_run(), RunState.STOPPED)
    delete_file(s, chat_file)
    with pytest.raises(NotFound):
        get_file(s, account.id, key=chat_file.key)


def test_a_run_cannot_be_created_on_a_file_deleted_after_it_was_looked_up(s, job, chat_file):
    delete_file(s, chat_file)
    err = invalid(lambda: create_run(s, job, "lora", {}, [DatasetChoice(chat_file)]))
    assert err.field == "datasets" and "deleted" in err.message


# --- platform rules: examples, save interval, finish estimate -----------------------------------------


def test_a_run_on_fewer_examples_than_the_minimum_is_recorded_and_failed_at_once(s, job, upload):
    few = upload(CHAT_ROW, n=MIN_EXAMPLES - 1)
    run = create_run(s, job, "lora", {}, [DatasetChoice(few)])
    assert run.state == RunState.FAILED and run.finished_at is not None
    assert run.error == f"Training file has {MIN_EXAMPLES - 1} example(s), but must have at least 10 examples"
    assert [e.payload["state"] for e in events_page(s, run)] == ["queued", "failed"]


def test_validation_examples_do_not_count_towards_the_minimum(s, make_run, upload):
    assert make_run(validation=[DatasetChoice(upload(CHAT_ROW, n=1))]).state == RunState.QUEUED


def test_training_files_with_fewer_examples_than_the_minimum_are_too_few(upload):
    few = upload(CHAT_ROW, n=MIN_EXAMPLES - 1)
    message = too_few_examples([DatasetChoice(few)])
    assert message == f"Training file has {MIN_EXAMPLES - 1} example(s), but must have at least 10 examples"


def test_the_examples_of_all_training_files_count_towards_the_minimum(upload):
    halves = [DatasetChoice(upload(CHAT_ROW, n=5)), DatasetChoice(upload(CHAT_ROW, n=5))]
    assert too_few_examples(halves) is None
    assert too_few_examples([DatasetChoice(upload(CHAT_ROW, n=MIN_EXAMPLES))]) is None


@pytest.mark.parametrize(("rows", "batch", "steps"), [(16, 4, 4), (17, 4, 5), (3, 4, 1), (10, 1, 10)])
def test_the_default_save_interval_is_one_checkpoint_per_epoch(rows, batch, steps):
    assert epoch_save_steps(rows, batch) == steps


def test_a_running_run_is_estimated_to_finish_after_its_trainers_eta(s, make_run):
    run = make_run()
    move(s, run, RunState.RUNNING)
    run.metrics = {"eta_seconds": 90.5}
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert estimated_finish(run, now) == datetime(2026, 1, 1, 12, 1, 30, 500000, tzinfo=UTC)


def test_a_run_that_is_not_training_has_no_finish_estimate(s, make_run):
    run = make_run()
    run.metrics = {"eta_seconds": 90}
    assert estimated_finish(run) is None
    move(s, run, RunState.RUNNING)
    run.metrics = {}
    assert estimated_finish(run) is None
