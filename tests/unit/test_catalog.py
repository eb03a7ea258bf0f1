"""The capability catalog: defaults, and the range/choice/type rules for every hyperparameter."""

from __future__ import annotations

import pytest

from tunehouse.core.catalog import METHODS, TINY_MODEL, TRAIN_MODES, capabilities
from tunehouse.core.errors import InvalidParameter

LORA_ONLY = {"lora_rank", "lora_alpha", "lora_dropout"}
OTHER_MODEL = "some-hf-model"


def resolve(given: dict, model: str = TINY_MODEL, train_mode: str = "sft", method: str = "lora") -> dict:
    return capabilities(model).resolve(train_mode, method, given)


def rejected(given: dict, method: str = "lora") -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        resolve(given, method=method)
    return info.value


# --- what every model supports --------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", TRAIN_MODES)
@pytest.mark.parametrize("method", METHODS)
def test_every_model_supports_sft_and_pretrain_with_full_and_lora(train_mode, method):
    assert capabilities(OTHER_MODEL).params_for(train_mode, method)


def test_unsupported_train_mode_raises_invalid_parameter_naming_train_mode():
    with pytest.raises(InvalidParameter) as info:
        capabilities(TINY_MODEL).params_for("kto", "lora")

    assert info.value.field == "train_mode"


def test_unsupported_method_raises_invalid_parameter_naming_method():
    with pytest.raises(InvalidParameter) as info:
        capabilities(TINY_MODEL).params_for("sft", "qlora")

    assert info.value.field == "method"


def test_resolve_with_an_unsupported_method_raises_invalid_parameter():
    with pytest.raises(InvalidParameter):
        resolve({}, method="prefix-tuning")


# --- defaults -------------------------------------------------------------------------------------------


def test_tiny_model_defaults_are_filled_in_when_nothing_is_given():
    out = resolve({})

    assert out["epochs"] == 3
    assert out["learning_rate"] == 1e-3
    assert out["max_seq_len"] == 512
    assert out["batch_size"] == 4
    assert out["lora_rank"] == 8


def test_other_models_get_the_usual_defaults():
    out = resolve({}, model=OTHER_MODEL)

    assert out["epochs"] == 1
    assert out["learning_rate"] == 3e-5
    assert out["max_seq_len"] == 4096


def test_given_values_replace_defaults_and_the_rest_stay_default():
    out = resolve({"epochs": 5, "lora_rank": 16})

    assert out["epochs"] == 5
    assert out["lora_rank"] == 16
    assert out["batch_size"] == 4


def test_none_counts_as_not_given():
    assert resolve({"epochs": None})["epochs"] == 3


def test_lora_only_parameters_are_absent_for_full_training():
    assert LORA_ONLY.isdisjoint(resolve({}, method="full"))


def test_lora_parameters_are_present_for_lora_training():
    assert LORA_ONLY.issubset(resolve({}, method="lora"))


def test_lora_value_given_for_full_training_is_not_resolved():
    assert "lora_rank" not in resolve({"lora_rank": 16}, method="full")


def test_unknown_keys_are_not_part_of_the_resolved_set():
    assert "Packing" not in resolve({"Packing": True})


# --- range and choice rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", 51),
        ("learning_rate", 0.5),
        ("learning_rate", 1e-9),
        ("batch_size", 0),
        ("weight_decay", -0.01),
        ("warmup_ratio", 0.6),
        ("lora_alpha", 513),
        ("lora_dropout", 0.9),
    ],
)
def test_value_outside_its_range_raises_invalid_parameter_naming_the_canonical_key(key, value):
    assert rejected({key: value}).field == key


@pytest.mark.parametrize(("key", "value"), [("max_seq_len", 300), ("max_seq_len", 4096), ("lora_rank", 12)])
def test_value_not_among_the_choices_raises_invalid_parameter_naming_the_canonical_key(key, value):
    # 4096 is a choice for real models but not for the tiny one.
    assert rejected({key: value}).field == key


def test_range_message_states_the_bounds():
    assert "[1, 50]" in rejected({"epochs": 51}).message


@pytest.mark.parametrize("value", [1, 50])
def test_range_bounds_are_inclusive(value):
    assert resolve({"epochs": value})["epochs"] == value


def test_max_seq_len_4096_is_a_choice_for_real_models():
    assert resolve({"max_seq_len": 4096}, model=OTHER_MODEL)["max_seq_len"] == 4096


# --- types --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2.5, True, False, "3", [3]])
def test_int_parameter_rejects_fractions_bools_strings_and_lists(value):
    assert rejected({"epochs": value}).field == "epochs"


@pytest.mark.parametrize("value", [True, "0.001"])
def test_float_parameter_rejects_bools_and_strings(value):
    assert rejected({"learning_rate": value}).field == "learning_rate"


def test_int_parameter_accepts_an_integral_float_and_returns_an_int():
    epochs = resolve({"epochs": 2.0})["epochs"]

    assert epochs == 2
    assert type(epochs) is int


def test_float_parameter_accepts_an_int_and_returns_a_float():
    weight_decay = resolve({"weight_decay": 0})["weight_decay"]

    assert weight_decay == 0.0
    assert type(weight_decay) is float


def test_int_parameters_come_back_as_ints_even_as_defaults():
    out = resolve({})

    assert all(type(out[k]) is int for k in ("epochs", "batch_size", "max_seq_len", "seed", "lora_rank"))


def test_dpo_takes_a_beta_that_other_modes_do_not():
    caps = capabilities(TINY_MODEL)
    assert "dpo_beta" in {p.key for p in caps.params_for("dpo", "lora")}
    assert "dpo_beta" not in {p.key for p in caps.params_for("sft", "lora")}
    assert caps.resolve("dpo", "full", {})["dpo_beta"] == 0.1
