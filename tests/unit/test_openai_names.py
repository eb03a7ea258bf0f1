"""OpenAI names and values ↔ the core's: statuses, hyperparameters, model names, events, result CSVs."""

from __future__ import annotations

import pytest

from tunehouse.api.openai import names
from tunehouse.core.states import RunState


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (RunState.QUEUED, "queued"),
        (RunState.RUNNING, "running"),
        (RunState.STOPPING, "cancelled"),
        (RunState.STOPPED, "cancelled"),
        (RunState.PAUSING, "pausing"),
        (RunState.PAUSED, "paused"),
        (RunState.SUCCEEDED, "succeeded"),
        (RunState.FAILED, "failed"),
        (RunState.VALIDATING, "validating_files"),
    ],
)
def test_every_run_state_has_an_openai_status(state: RunState, status: str) -> None:
    assert names.status_of(state) == status


def test_hyperparameters_map_to_canonical_names_and_auto_leaves_defaults() -> None:
    given = {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2.5}
    assert names.hyperparameters_in(given, "supervised", 1e-3) == {"epochs": 3, "learning_rate": 2.5e-3}


def test_dpo_beta_maps_to_dpo_beta() -> None:
    assert names.hyperparameters_in({"beta": 0.3}, "dpo", 1e-3) == {"dpo_beta": 0.3}


@pytest.mark.parametrize(
    ("given", "bad"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_epochs": 2.5}, "n_epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
        ({"learning_rate_multiplier": float("nan")}, "learning_rate_multiplier"),
        ({"beta": 0.1}, "beta"),  # not a supervised hyperparameter
        ({"warmup": 0.1}, "warmup"),
    ],
)
def test_bad_supervised_hyperparameters_name_the_key(given: dict[str, object], bad: str) -> None:
    with pytest.raises(names.HyperparameterError) as exc:
        names.hyperparameters_in(given, "supervised", 1e-3)
    assert exc.value.name == bad


def test_resolved_values_are_echoed_as_concrete_numbers() -> None:
    resolved = {"epochs": 2, "batch_size": 4, "learning_rate": 0.003, "dpo_beta": 0.1}
    assert names.hyperparameters_out(resolved, "supervised", 0.001) == {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate_multiplier": 3.0,
    }
    assert names.hyperparameters_out(resolved, "dpo", 0.001)["beta"] == 0.1


def test_output_names_follow_the_ft_pattern_and_escape_braces() -> None:
    template = names.output_name_template("tunehouse-tiny", "org-alice", "bot")
    assert template.format(key="abc") == "ft:tunehouse-tiny:org-alice:bot:abc"
    assert names.output_name_template("m{x}", "org-a", None).format(key="k") == "ft:m{x}:org-a::k"


def test_checkpoint_model_names_round_trip() -> None:
    name = names.checkpoint_model("ft:tunehouse-tiny:org-a::k", 40)
    assert name == "ft:tunehouse-tiny:org-a::k:ckpt-step-40"
    assert names.parse_checkpoint_model(name) == ("ft:tunehouse-tiny:org-a::k", 40)
    assert names.parse_checkpoint_model("ft:tunehouse-tiny:org-a::k") is None


@pytest.mark.parametrize(
    "bad",
    [[1], {"k": 1}, {f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
)
def test_metadata_limits(bad: object) -> None:
    with pytest.raises(ValueError):
        names.check_metadata(bad)


def test_metadata_within_limits_is_kept() -> None:
    assert names.check_metadata({"k" * 64: "v" * 512}) == {"k" * 64: "v" * 512}
    assert names.check_metadata(None) is None


def test_metrics_are_thinned_to_about_a_hundred_keeping_the_last_step() -> None:
    kept = [s for s in range(1, 6401) if names.keep_metrics_step(s, 6400)]
    assert len(kept) == 100 and kept[-1] == 6400
    assert all(names.keep_metrics_step(s, 8) for s in range(1, 9))


def test_metrics_events_carry_openai_keys() -> None:
    payload = {"step": 3, "train_loss": 1.234, "learning_rate": 0.1, "train_token_accuracy": 0.5}
    train = names.render_event(5, "metrics", payload, "j", 8, "m")
    assert train is not None and train.type == "metrics" and train.message == "Step 3/8: training loss=1.23"
    assert train.data == {
        "step": 3,
        "total_steps": 8,
        "train_loss": 1.234,
        "train_mean_token_accuracy": 0.5,
        "learning_rate": 0.1,
    }
    ev = names.render_event(
        6, "metrics", {"step": 4, "eval_loss": 2.0, "eval_token_accuracy": 0.5}, "j", 8, "m"
    )
    assert ev is not None and ev.data["full_valid_loss"] == 2.0
    assert ev.data["full_valid_mean_token_accuracy"] == 0.5


def test_first_queued_status_is_the_creation_and_progress_is_not_shown() -> None:
    created = names.render_event(1, "status", {"state": "queued"}, "ftjob-x", 0, "m")
    assert created is not None and created.message == "Created fine-tuning job: ftjob-x"
    resumed = names.render_event(9, "status", {"state": "queued"}, "ftjob-x", 0, "m")
    assert resumed is not None and resumed.message == "Job resumed"
    assert names.render_event(3, "progress", {"step": 1}, "ftjob-x", 8, "m") is None
    failed = names.render_event(4, "status", {"state": "failed", "error": "boom"}, "ftjob-x", 8, "m")
    assert failed is not None and (failed.level, failed.message) == ("error", "boom")


def test_the_trainers_own_reports_are_not_job_events() -> None:
    # Its phases echo the job's status, and its error reason reaches the client with the failed status.
    for type_, payload in [("trainer_status", {"state": "running"}), ("error", {"reason": "boom"})]:
        assert names.render_event(5, type_, payload, "ftjob-x", 8, "m") is None


def test_results_csv_merges_train_and_eval_rows_per_step() -> None:
    core = (
        "step,train_loss,learning_rate,grad_norm,tokens_per_second,eval_loss,eval_token_accuracy\n"
        "1,2.314049,0.001,1.0,10,,\n"
        "2,1.9877,0.001,1.0,10,,\n"
        "2,,,,,2.102334,0.45\n"
    )
    assert names.results_csv(core).decode() == (
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
        "1,2.31405,,,\n"
        "2,1.98770,,2.10233,0.45000\n"
    )
