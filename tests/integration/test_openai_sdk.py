"""OpenAI files and fine-tuning driven by the official `openai` SDK against a live server.

Most clients here are built with `_strict_response_validation=True`, so every object the server returns
must parse against the SDK's own models (required fields, types, enums).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

pytestmark = pytest.mark.heavy(4)

MODEL = "tunehouse-tiny"
FAST = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 3}  # lr 3e-3 on the tiny model
TERMINAL = {"succeeded", "failed", "cancelled"}
PREFERENCE_ROWS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Name a colour, number {i}."}]},
        "preferred_output": [{"role": "assistant", "content": "Blue."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(12)
]


def make_client(server: LiveServer, keys: dict[str, str], strict: bool = True) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], _strict_response_validation=strict)


@pytest.fixture(scope="module")
def client(server: LiveServer, alice: dict[str, str]) -> OpenAI:
    return make_client(server, alice)


@pytest.fixture(scope="module")
def lenient(server: LiveServer, alice: dict[str, str]) -> OpenAI:
    """For paused jobs: `paused` is our extension, outside the SDK's status enum."""
    return make_client(server, alice, strict=False)


@pytest.fixture(scope="module")
def chat_file(client: OpenAI) -> str:
    return client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id


def sft(hp: dict[str, Any] | None = None) -> Any:
    return {"type": "supervised", "supervised": {"hyperparameters": hp or FAST}}


def wait_done(
    client: OpenAI, job_id: str, seen: list[str] | None = None, timeout: float = 240
) -> FineTuningJob:
    def check() -> FineTuningJob | None:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if seen is not None and (not seen or seen[-1] != job.status):
            seen.append(job.status)
        return job if job.status in TERMINAL else None

    return wait_for(check, timeout=timeout)  # type: ignore[no-any-return]


def wait_steps(client: OpenAI, job_id: str, at_least: int = 1) -> None:
    """Until the trainer has reported a metrics event for a step of this job."""

    def check() -> bool:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        return any(e.type == "metrics" and int(e.data["step"]) >= at_least for e in events)  # type: ignore[index]

    wait_for(check)


# ---- files -----------------------------------------------------------------------------------------


def test_upload_answers_a_file_object_with_size_name_and_purpose(client: OpenAI) -> None:
    body = jsonl(CHAT_ROWS)
    f = client.files.create(file=("train.jsonl", body), purpose="fine-tune")
    assert f.id.startswith("file-") and f.object == "file" and f.status == "processed"
    assert f.bytes == len(body) and f.filename == "train.jsonl" and f.purpose == "fine-tune"
    assert f.expires_at is None
    assert client.files.retrieve(f.id) == f


def test_file_content_downloads_the_uploaded_bytes(client: OpenAI) -> None:
    body = jsonl(CHAT_ROWS[:11])
    f = client.files.create(file=("eleven.jsonl", body), purpose="fine-tune")
    assert client.files.content(f.id).content == body


def test_files_list_pages_with_limit_order_and_purpose(server: LiveServer) -> None:
    own = make_client(server, server.keys("file-lister"))
    ids = [own.files.create(file=(f"f{i}.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id for i in range(3)]
    first = own.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more is True
    assert [f.id for f in own.files.list(limit=2)] == ids[::-1]  # the iterator follows `after`
    assert [f.id for f in own.files.list(order="asc", limit=1)] == ids
    assert [f.id for f in own.files.list(purpose="fine-tune-results")] == []
    assert [f.id for f in own.files.list(purpose="fine-tune")] == ids[::-1]


def test_deleted_file_is_gone_from_retrieve_and_list(client: OpenAI) -> None:
    f = client.files.create(file=("gone.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    deleted = client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True and deleted.object == "file"
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(f.id)
    assert exc.value.code == "file_not_found"
    assert f.id not in [x.id for x in client.files.list()]


def test_a_malformed_upload_is_a_bad_request_naming_the_lines(client: OpenAI) -> None:
    bad = jsonl(CHAT_ROWS[:2]) + b'["not", "an object"]\n' + b"{not json\n"
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert exc.value.code == "invalid_file_format" and exc.value.param == "file"
    assert "line 3" in exc.value.message and "line 4" in exc.value.message


def test_expires_after_sets_expires_at_from_created_at(client: OpenAI) -> None:
    f = client.files.create(
        file=("short-lived.jsonl", jsonl(CHAT_ROWS)),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    assert client.files.retrieve(f.id).expires_at == f.created_at + 3600


@pytest.mark.parametrize(
    ("expires_after", "param"),
    [
        ({"anchor": "created_at", "seconds": 3599}, "expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "expires_after.seconds"),
        ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor"),
    ],
)
def test_expires_after_outside_its_rules_is_a_bad_request(
    client: OpenAI, expires_after: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(
            file=("x.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune", expires_after=expires_after
        )
    assert exc.value.param == param


def test_an_unsupported_purpose_is_a_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("x.jsonl", jsonl(CHAT_ROWS)), purpose="assistants")
    assert exc.value.param == "purpose"


def test_a_bad_api_key_is_an_authentication_error(server: LiveServer) -> None:
    bad = make_client(server, {"api_key": "sk-not-a-key"})
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.files.list()
    assert exc.value.code == "invalid_api_key" and exc.value.request_id
    with pytest.raises(openai.AuthenticationError):
        bad.fine_tuning.jobs.list()


# ---- job validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [
        ({"model": "no-such-model"}, "model", "model_not_available"),
        ({"training_file": "file-doesnotexist1"}, "training_file", "file_not_found"),
        ({"validation_file": "file-doesnotexist1"}, "validation_file", "file_not_found"),
        ({"method": {"type": "reinforcement"}}, "method", "unsupported_method"),
        (
            {"method": sft({"n_epochs": 0})},
            "method.supervised.hyperparameters.n_epochs",
            "invalid_hyperparameters",
        ),
        (
            {"method": sft({"n_epochs": 1.5})},
            "method.supervised.hyperparameters.n_epochs",
            "invalid_hyperparameters",
        ),
        (
            {"method": sft({"n_epochs": 51})},
            "method.supervised.hyperparameters.n_epochs",
            "invalid_hyperparameters",
        ),
        (
            {"method": sft({"batch_size": "big"})},
            "method.supervised.hyperparameters.batch_size",
            "invalid_hyperparameters",
        ),
        (
            {"method": sft({"learning_rate_multiplier": 50})},
            "method.supervised.hyperparameters.learning_rate_multiplier",
            "invalid_hyperparameters",
        ),
        ({"method": sft({"beta": 0.2})}, "method.supervised.hyperparameters.beta", "invalid_hyperparameters"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}},
            "method.dpo.hyperparameters.beta",
            "invalid_hyperparameters",
        ),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "invalid_hyperparameters"),
        (
            {"hyperparameters": {"n_epochs": 3}, "method": sft({"n_epochs": 2})},
            "hyperparameters.n_epochs",
            "invalid_hyperparameters",
        ),
        ({"method": {"type": "dpo"}}, "training_file", "invalid_training_file"),
        ({"suffix": "no spaces allowed"}, "suffix", "invalid_value"),
        ({"suffix": "x" * 65}, "suffix", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
        ({"seed": 2**40}, "seed", "invalid_value"),
    ],
)
def test_invalid_job_requests_are_bad_requests_naming_the_param(
    client: OpenAI, chat_file: str, overrides: dict[str, Any], param: str, code: str
) -> None:
    args: dict[str, Any] = {"model": MODEL, "training_file": chat_file, **overrides}
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(**args)
    assert (exc.value.param, exc.value.code) == (param, code), exc.value.message


def test_a_result_file_cannot_be_trained_on(client: OpenAI, finished: FineTuningJob) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model=MODEL, training_file=finished.result_files[0])
    assert (exc.value.param, exc.value.code) == ("training_file", "invalid_file_purpose")


def test_a_job_with_too_few_examples_fails_with_invalid_n_examples(client: OpenAI) -> None:
    small = client.files.create(file=("small.jsonl", jsonl(CHAT_ROWS[:7])), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=small)
    assert job.status == "failed" and job.finished_at is not None and job.fine_tuned_model is None
    assert job.error is not None and job.error.code == "invalid_n_examples"
    assert job.error.param == "training_file" and "has 7 example(s)" in job.error.message
    assert client.fine_tuning.jobs.retrieve(job.id) == job


def test_legacy_hyperparameters_integrations_and_extra_body_are_accepted(client: OpenAI) -> None:
    # A file too small to train on: the job is recorded with everything resolved, then fails at once.
    small = client.files.create(file=("legacy.jsonl", jsonl(CHAT_ROWS[:5])), purpose="fine-tune").id
    wandb = {"type": "wandb", "wandb": {"project": "adders"}}
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=small,
        hyperparameters={"n_epochs": 5, "learning_rate_multiplier": "auto"},
        integrations=[wandb],  # type: ignore[list-item]
        extra_body={"not_an_openai_field": True},
    )
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 5,
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
    }
    assert job.method is not None and job.method.type == "supervised" and job.method.supervised is not None
    assert job.method.supervised.hyperparameters.model_dump() == job.hyperparameters.model_dump()
    assert [i.model_dump(exclude_none=True) for i in job.integrations or []] == [wandb]


def test_cancelling_a_finished_job_is_a_bad_request_without_retries(client: OpenAI, failed_job: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.cancel(failed_job)
    assert exc.value.code == "job_not_cancellable"
    assert exc.value.response.request.headers["x-stainless-retry-count"] == "0"


def test_pause_and_resume_outside_their_states_are_bad_requests(client: OpenAI, failed_job: str) -> None:
    for action in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.BadRequestError) as exc:
            action(failed_job)
        assert exc.value.code == "invalid_state"


@pytest.fixture(scope="module")
def failed_job(client: OpenAI) -> str:
    small = client.files.create(file=("tiny.jsonl", jsonl(CHAT_ROWS[:3])), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(model=MODEL, training_file=small).id


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.fine_tuning.jobs.retrieve("ftjob-missing"),
        lambda c: c.fine_tuning.jobs.cancel("ftjob-aaaaaaaaaaaa"),
        lambda c: c.fine_tuning.jobs.pause("ftjob-aaaaaaaaaaaa"),
        lambda c: c.fine_tuning.jobs.resume("ftjob-aaaaaaaaaaaa"),
        lambda c: c.fine_tuning.jobs.list_events("ftjob-aaaaaaaaaaaa"),
        lambda c: c.fine_tuning.jobs.checkpoints.list("ftjob-aaaaaaaaaaaa"),
    ],
)
def test_unknown_job_ids_are_not_found_with_code_param_and_request_id(
    client: OpenAI, call: Callable[[OpenAI], Any]
) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        call(client)
    assert exc.value.code == "fine_tune_not_found" and exc.value.param == "fine_tuning_job_id"
    assert exc.value.request_id


def test_unknown_file_ids_are_not_found(client: OpenAI) -> None:
    for call in (client.files.retrieve, client.files.delete, client.files.content):
        with pytest.raises(openai.NotFoundError) as exc:
            call("file-doesnotexist1")
        assert exc.value.code == "file_not_found"


def test_another_accounts_jobs_and_files_are_invisible(
    server: LiveServer, bob: dict[str, str], failed_job: str, chat_file: str
) -> None:
    other = make_client(server, bob)
    for call in (
        other.fine_tuning.jobs.retrieve,
        other.fine_tuning.jobs.cancel,
        other.fine_tuning.jobs.list_events,
    ):
        with pytest.raises(openai.NotFoundError):
            call(failed_job)
    with pytest.raises(openai.NotFoundError):
        other.files.content(chat_file)
    assert failed_job not in [j.id for j in other.fine_tuning.jobs.list()]
    assert chat_file not in [f.id for f in other.files.list()]
    with pytest.raises(openai.BadRequestError) as exc:
        other.fine_tuning.jobs.create(model=MODEL, training_file=chat_file)
    assert exc.value.code == "file_not_found"


def test_job_list_pages_newest_first_and_filters_by_metadata(server: LiveServer) -> None:
    own = make_client(server, server.keys("job-lister"))
    small = own.files.create(file=("few.jsonl", jsonl(CHAT_ROWS[:2])), purpose="fine-tune").id
    # Too few examples: each job is recorded and fails at once, so listing costs no training.
    tags = [{"team": "a"}, {"team": "b"}, None, {"team": "a", "env": "x"}]
    ids = [own.fine_tuning.jobs.create(model=MODEL, training_file=small, metadata=t).id for t in tags]
    page = own.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in page.data] == ids[::-1][:3] and page.has_more is True
    assert [j.id for j in own.fine_tuning.jobs.list(limit=3)] == ids[::-1]
    assert [j.id for j in own.fine_tuning.jobs.list(metadata={"team": "a"})] == [ids[3], ids[0]]
    assert [j.id for j in own.fine_tuning.jobs.list(metadata={"team": "a", "env": "x"})] == [ids[3]]
    assert [j.id for j in own.fine_tuning.jobs.list(metadata={"team": "zzz"})] == []
    assert [j.id for j in own.fine_tuning.jobs.list(extra_query={"metadata": "null"})] == [ids[2]]


def test_dpo_job_echoes_resolved_beta_and_can_be_cancelled(client: OpenAI) -> None:
    prefs = client.files.create(file=("prefs.jsonl", jsonl(PREFERENCE_ROWS)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=prefs,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 1}}},
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    hp = job.method.dpo.hyperparameters
    assert hp is not None and (hp.beta, hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (
        0.1,
        1,
        4,
        1.0,
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert wait_done(client, job.id).status == "cancelled"


# ---- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(client: OpenAI, chat_file: str) -> FineTuningJob:
    validation = client.files.create(file=("valid.jsonl", jsonl(CHAT_ROWS[:4])), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=chat_file,
        validation_file=validation,
        suffix="adder",
        seed=7,
        metadata={"purpose": "test"},
        method=sft(),
    )
    assert job.status == "queued" and job.validation_file == validation and job.trained_tokens is None
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate_multiplier": 3.0,
    }
    assert job.method is not None and job.method.supervised is not None
    assert job.method.supervised.hyperparameters.model_dump() == job.hyperparameters.model_dump()
    assert (job.seed, job.user_provided_suffix, job.metadata) == (7, "adder", {"purpose": "test"})
    seen: list[str] = []
    done = wait_done(client, job.id, seen)
    assert done.status == "succeeded", done.error
    assert "running" in seen or "queued" in seen
    return done


def test_a_finished_job_names_its_model_tokens_and_result_file(finished: FineTuningJob) -> None:
    key = finished.id.removeprefix("ftjob-")
    assert finished.fine_tuned_model == f"ft:{MODEL}:org-alice:adder:{key}"
    assert finished.organization_id == "org-alice" and finished.error is None
    assert isinstance(finished.trained_tokens, int) and finished.trained_tokens > 0
    assert finished.finished_at is not None and finished.finished_at >= finished.created_at
    assert finished.estimated_finish is None and len(finished.result_files) == 1


def test_the_result_file_is_a_csv_of_step_metrics(client: OpenAI, finished: FineTuningJob) -> None:
    meta = client.files.retrieve(finished.result_files[0])
    assert meta.purpose == "fine-tune-results"
    text = client.files.content(meta.id).text
    assert meta.bytes == len(text.encode())
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    steps = [int(r[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[0] == 1 and all(float(r[1]) > 0 for r in rows[1:])
    assert any(r[3] for r in rows[1:])  # the validation file was evaluated


def test_events_page_newest_first_and_tell_the_story(client: OpenAI, finished: FineTuningJob) -> None:
    first = client.fine_tuning.jobs.list_events(finished.id, limit=2)
    assert len(first.data) == 2 and first.has_more is True
    events = list(client.fine_tuning.jobs.list_events(finished.id, limit=2))
    assert len({e.id for e in events}) == len(events) and events[:2] == first.data
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert messages[-3:] == [
        "Files validated, moving job to queued state",
        f"Validating training file: {finished.training_file} and validation file: {finished.validation_file}",
        f"Created fine-tuning job: {finished.id}",
    ]
    assert messages.count("Fine-tuning job started") == 1
    assert messages.count("The job has successfully completed") == 1
    assert f"New fine-tuned model created: {finished.fine_tuned_model}" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(isinstance(e.data, dict) and e.data["total_steps"] == 8 for e in metrics)
    train = [e.data for e in metrics if "train_loss" in e.data]  # type: ignore[operator]
    assert [d["step"] for d in train] == list(range(8, 0, -1))  # type: ignore[index]
    assert any("full_valid_loss" in e.data for e in metrics)  # type: ignore[operator]


def test_metrics_events_always_carry_train_loss_with_validation_in_the_same_steps_event(
    client: OpenAI, finished: FineTuningJob
) -> None:
    metrics = [
        e.data for e in client.fine_tuning.jobs.list_events(finished.id, limit=100) if e.type == "metrics"
    ]
    assert metrics and all("train_loss" in d for d in metrics)  # type: ignore[operator]
    steps = [d["step"] for d in metrics]  # type: ignore[index]
    assert len(steps) == len(set(steps))  # one event per step: no separate validation event
    validated = sorted(d["step"] for d in metrics if "full_valid_loss" in d)  # type: ignore[index, operator]
    assert validated == [4, 8]  # the end of each epoch


def test_checkpoints_list_one_per_epoch_with_metrics(client: OpenAI, finished: FineTuningJob) -> None:
    page = client.fine_tuning.jobs.checkpoints.list(finished.id, limit=1)
    assert page.has_more is True
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(finished.id, limit=1))
    assert [c.step_number for c in ckpts] == [8, 4]
    newest = ckpts[0]
    assert newest.fine_tuning_job_id == finished.id
    assert newest.fine_tuned_model_checkpoint == f"{finished.fine_tuned_model}:ckpt-step-8"
    assert newest.metrics.train_loss is not None and newest.metrics.train_loss > 0
    assert newest.metrics.full_valid_loss is not None and newest.metrics.step == 8


def test_fine_tuned_models_are_routable_path_segments(client: OpenAI, finished: FineTuningJob) -> None:
    assert finished.fine_tuned_model is not None
    listed = client.fine_tuning.checkpoints.permissions.list(finished.fine_tuned_model)
    assert listed.data == [] and listed.has_more is False
    ckpt = f"{finished.fine_tuned_model}:ckpt-step-4"
    assert list(client.fine_tuning.checkpoints.permissions.list(ckpt)) == []
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.checkpoints.permissions.list(f"ft:{MODEL}:org-alice::nope")


def test_training_continues_from_a_fine_tuned_model_and_from_a_checkpoint(
    client: OpenAI, chat_file: str, finished: FineTuningJob
) -> None:
    assert finished.fine_tuned_model is not None
    sources = [finished.fine_tuned_model, f"{finished.fine_tuned_model}:ckpt-step-4"]
    jobs = [
        client.fine_tuning.jobs.create(
            model=m, training_file=chat_file, suffix="more", method=sft({"n_epochs": 1})
        )
        for m in sources
    ]
    assert [j.model for j in jobs] == sources
    starts = []
    for job in jobs:
        done = wait_done(client, job.id)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:{MODEL}:org-alice:more:{job.id.removeprefix('ftjob-')}"
        logs = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        starts += [m for m in logs if m.startswith("init_from: continuing to train the adapter")]
    assert len(starts) == 2 and starts[1].rstrip("/").endswith("step-4"), starts


def test_cancelling_a_running_job_answers_cancelled_and_the_run_stops(client: OpenAI) -> None:
    long = client.files.create(file=("long.jsonl", jsonl(CHAT_ROWS * 8)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=long,
        method=sft({"n_epochs": 50, "batch_size": 1, "learning_rate_multiplier": 2}),
    )
    # Training has begun once the trainer reports progress, and with it an estimated finish.
    running = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).estimated_finish and j)
    assert running.status == "running" and running.estimated_finish > running.created_at
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.fine_tuned_model is None
    events = wait_for(
        lambda: (
            [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=3).data]
            if client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message
            == "Fine-tuning job cancelled"
            else None
        )
    )
    assert events[0] == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_keeps_the_checkpoint_and_resume_continues_to_success(client: OpenAI, lenient: OpenAI) -> None:
    data = client.files.create(file=("pause.jsonl", jsonl(CHAT_ROWS * 8)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=data,
        method=sft({"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 2}),
    )
    wait_steps(client, job.id, at_least=2)
    assert lenient.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")
    wait_for(lambda: lenient.fine_tuning.jobs.retrieve(job.id).status == "paused")
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert 2 <= paused_at < 256
    assert client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message == "Job paused"
    assert lenient.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Job resumed" in messages
    assert any(f"at step {paused_at} of 256" in m for m in messages), messages
