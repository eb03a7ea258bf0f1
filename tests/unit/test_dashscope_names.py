"""DashScope's names for the core's concepts, and the translation of its hyper-parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tunehouse.api.dashscope import names
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.states import RunState

TINY_SEQ = (128.0, 256.0, 512.0, 1024.0)
CREATED = datetime(2026, 11, 23, 0, 40, 5, tzinfo=UTC)


def test_every_run_state_has_one_of_the_spec_statuses() -> None:
    assert set(names.STATUS) == set(RunState)
    assert set(names.STATUS.values()) <= {
        "PENDING",
        "QUEUING",
        "RUNNING",
        "CANCELING",
        "SUCCEEDED",
        "FAILED",
        "CANCELED",
    }


def test_ended_states_read_as_the_three_terminal_statuses() -> None:
    assert {names.status_of(s) for s in ("succeeded", "failed", "stopped")} == names.TERMINAL


@pytest.mark.parametrize(
    ("training_type", "core"),
    [
        ("sft", ("sft", "full")),
        ("efficient_sft", ("sft", "lora")),
        ("dpo_full", ("dpo", "full")),
        ("dpo_lora", ("dpo", "lora")),
        ("cpt", ("pretrain", "full")),
    ],
)
def test_training_types_map_to_a_core_mode_and_method_and_back(
    training_type: str, core: tuple[str, str]
) -> None:
    assert names.training_type_in(training_type) == core
    assert names.training_type_out(*core) == training_type


def test_an_unknown_training_type_is_an_invalid_training_type() -> None:
    with pytest.raises(InvalidParameter) as e:
        names.training_type_in("rlhf")
    assert e.value.field == "training_type"


def test_a_job_id_carries_the_utc_minute_and_the_run_key() -> None:
    job_id = names.job_id("abcdefghijkl", CREATED)
    assert job_id == "ft-202611230040-abcdefghijkl"
    assert names.parse_job_id(job_id) == ("abcdefghijkl", "202611230040")


def test_the_bare_prefixed_key_is_accepted_as_a_job_id() -> None:
    assert names.parse_job_id("ft-abcdefghijkl") == ("abcdefghijkl", None)
    assert names.stamp_matches(None, CREATED)


@pytest.mark.parametrize(
    "ident", ["nope", "ft-", "ft-ABCDEFGHIJKL", "ft-2026-abcdefghijkl", "job-abcdefghijkl"]
)
def test_malformed_job_ids_do_not_parse(ident: str) -> None:
    assert names.parse_job_id(ident) is None


def test_a_job_id_with_another_minute_does_not_match_the_run() -> None:
    assert not names.stamp_matches("202611230041", CREATED)


def test_hyperparameters_are_renamed_and_the_default_split_holds_out_a_fifth() -> None:
    core, split = names.hyperparameters_in({"n_epochs": 3, "batch_size": 2, "lora_rank": 16}, TINY_SEQ, False)
    assert core == {"epochs": 3, "batch_size": 2, "lora_rank": 16}
    assert split == 20


def test_a_string_learning_rate_is_parsed() -> None:
    assert names.hyperparameters_in({"learning_rate": "1.6e-5"}, TINY_SEQ, False)[0] == {
        "learning_rate": 1.6e-5
    }


@pytest.mark.parametrize(("given", "trained"), [(1, 128), (128, 128), (200, 256), (1024, 1024)])
def test_max_length_trains_at_the_smallest_offered_length_that_holds_it(given: int, trained: int) -> None:
    assert names.hyperparameters_in({"max_length": given}, TINY_SEQ, False)[0] == {"max_seq_len": trained}


@pytest.mark.parametrize(("split", "held_out"), [(0.8, 20), (0.95, 5), (0.5, 50), (0.999, 0)])
def test_split_is_the_training_share_and_becomes_the_held_out_percent(split: float, held_out: int) -> None:
    assert names.hyperparameters_in({"split": split}, TINY_SEQ, False)[1] == held_out


def test_nothing_is_split_off_when_validation_files_are_given() -> None:
    assert names.hyperparameters_in({"split": 0.7}, TINY_SEQ, True)[1] == 0
    assert names.hyperparameters_in({}, TINY_SEQ, True)[1] == 0


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": True}, "learning_rate"),
        ({"max_length": 1025}, "max_length"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": 12.5}, "max_length"),
        ({"split": 0}, "split"),
        ({"split": 1}, "split"),
        ({"split": 0.4}, "split"),
        ({"split": "0.8"}, "split"),
        ({"max_split_val_dataset_sample": 0}, "max_split_val_dataset_sample"),
        ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type"),
        ({"lr_scheduler_type": "inverse_sqrt"}, "lr_scheduler_type"),  # the spec's, but no trainer schedule
        ({"max_grad_norm": -1}, "max_grad_norm"),
        ({"target_modules": "q_proj"}, "target_modules"),
    ],
)
def test_values_breaking_the_spec_rules_are_invalid(given: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        names.hyperparameters_in(given, TINY_SEQ, False)
    assert e.value.field == field


def test_unknown_and_spec_only_keys_pass_through_for_the_core_to_keep() -> None:
    given = {"lr_scheduler_type": "linear", "target_modules": "ALL", "my_knob": [1, 2]}
    assert names.hyperparameters_in(given, TINY_SEQ, False)[0] == given


def test_core_fields_are_named_in_the_callers_terms() -> None:
    assert names.field_out("epochs") == "hyper_parameters.n_epochs"
    assert names.field_out("max_seq_len") == "hyper_parameters.max_length"
    assert names.field_out("learning_rate") == "hyper_parameters.learning_rate"
    assert names.field_out("train_mode") == "training_type"
    assert names.field_out("model") == "model"


def test_runs_from_other_dialects_show_their_resolved_settings_under_dashscope_names() -> None:
    out = names.hyperparameters_out({"epochs": 3, "max_seq_len": 512, "learning_rate": 1e-3}, 20)
    assert out == {"n_epochs": 3, "max_length": 512, "learning_rate": 1e-3, "split": 0.8}


def test_a_log_line_is_one_line_with_time_and_text() -> None:
    line = names.log_line(CREATED, "log", {"message": "first\nsecond"})
    assert "\n" not in line and line.endswith("first second")


def test_status_events_read_as_dashscope_statuses_and_trainer_phases_as_such() -> None:
    assert names.log_line(CREATED, "status", {"state": "stopping"}).endswith("status: CANCELING")
    assert names.log_line(CREATED, "trainer_status", {"state": "loading"}).endswith("trainer: loading")


def test_progress_and_metrics_lines_show_the_step() -> None:
    progress = {"step": 3, "total_steps": 8, "percent": 37, "eta_seconds": 1.5}
    assert "progress: step 3/8 (37%), eta_seconds=1.5" in names.log_line(CREATED, "progress", progress)
    metrics = {"step": 3, "train_loss": 1.25}
    assert "metrics: step 3: train_loss=1.25" in names.log_line(CREATED, "metrics", metrics)


def test_trainer_knobs_dashscope_does_not_name_pass_on_under_their_canonical_keys() -> None:
    given = {"gradient_checkpointing": True, "merge_adapter": True, "lora_target_modules": ["q_proj"]}
    assert names.hyperparameters_in(given, TINY_SEQ, False)[0] == given
