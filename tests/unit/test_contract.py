"""The run contract: the catalog the APIs check against and the hyperparameters the trainer reads agree."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Literal

import pytest

from tunehouse.contract.hyperparameters import (
    ALL_LINEAR,
    NOT_USER_SETTABLE,
    TINY_DEFAULTS,
    TINY_MODEL,
    Hyperparameters,
    user_settable,
)
from tunehouse.core.catalog import METHODS, TRAIN_MODES, HyperParam, capabilities
from tunehouse.core.errors import InvalidParameter

MODELS = (TINY_MODEL, "some-hf-model")
FIELDS = Hyperparameters.model_fields


def catalog_params(model: str) -> dict[str, HyperParam]:
    """Every knob the catalog offers on `model`, over all train modes and methods."""
    caps = capabilities(model)
    return {p.key: p for mode in TRAIN_MODES for method in METHODS for p in caps.params_for(mode, method)}


def annotation_of(p: HyperParam) -> Any:
    """The trainer-side type a catalog parameter promises."""
    if p.type == "str":
        return Literal[p.check_value]  # type: ignore[valid-type]
    if p.type == "modules":
        return Literal["all-linear"] | list[str]
    return {"int": int, "float": float, "bool": bool}[p.type]


@pytest.mark.parametrize("model", MODELS)
def test_every_catalog_field_is_a_trainer_hyperparameter_of_the_same_type(model: str) -> None:
    for key, p in catalog_params(model).items():
        assert key in FIELDS, key
        assert FIELDS[key].annotation == annotation_of(p), key


def test_catalog_defaults_are_the_trainers_on_real_models() -> None:
    for key, p in catalog_params("some-hf-model").items():
        assert p.default == FIELDS[key].default, key


def test_the_tiny_model_differs_from_the_trainers_defaults_only_where_its_profile_says() -> None:
    for key, p in catalog_params(TINY_MODEL).items():
        assert p.default == TINY_DEFAULTS.get(key, FIELDS[key].default), key


def test_every_trainer_hyperparameter_is_in_the_catalog_unless_marked_not_user_settable() -> None:
    offered = set(catalog_params("some-hf-model"))
    assert offered == user_settable()
    assert set(FIELDS) == offered | set(NOT_USER_SETTABLE)
    assert offered.isdisjoint(NOT_USER_SETTABLE)


def test_test_only_and_run_level_fields_are_not_offered_by_any_model() -> None:
    for model in MODELS:
        assert {"step_delay", "split_ratio"}.isdisjoint(catalog_params(model))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", TRAIN_MODES)
@pytest.mark.parametrize("method", METHODS)
def test_resolved_defaults_load_as_trainer_hyperparameters_unchanged(
    model: str, mode: str, method: str
) -> None:
    resolved = capabilities(model).resolve(mode, method, {})
    loaded = Hyperparameters.model_validate(resolved).model_dump()
    assert {k: loaded[k] for k in resolved} == resolved


def test_the_four_trainer_knobs_once_unreachable_resolve_to_trainer_values() -> None:
    given = {
        "lr_scheduler_type": "cosine",
        "gradient_checkpointing": True,
        "lora_target_modules": "q_proj, v_proj",
        "merge_adapter": True,
    }
    resolved = capabilities(TINY_MODEL).resolve("sft", "lora", given)
    hp = Hyperparameters.model_validate(resolved)
    assert (hp.lr_scheduler_type, hp.gradient_checkpointing, hp.merge_adapter) == ("cosine", True, True)
    assert hp.lora_target_modules == ["q_proj", "v_proj"]


def test_packing_is_not_offered_for_dpo_which_never_packs() -> None:
    caps = capabilities(TINY_MODEL)
    assert "packing" not in {p.key for p in caps.params_for("dpo", "lora")}
    assert caps.resolve("sft", "full", {})["packing"] is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr_scheduler_type", "inverse_sqrt"),
        ("lr_scheduler_type", 1),
        ("gradient_checkpointing", 1),
        ("gradient_checkpointing", "true"),
        ("lora_target_modules", []),
        ("lora_target_modules", ["q_proj", "v proj"]),
        ("lora_target_modules", 7),
    ],
)
def test_values_the_trainer_cannot_take_are_invalid_parameters(key: str, value: Any) -> None:
    with pytest.raises(InvalidParameter) as info:
        capabilities(TINY_MODEL).resolve("sft", "lora", {key: value})
    assert info.value.field == key


def test_all_linear_is_kept_as_the_special_value() -> None:
    assert capabilities(TINY_MODEL).resolve("sft", "lora", {})["lora_target_modules"] == ALL_LINEAR


def test_the_contract_loads_neither_torch_nor_transformers_nor_the_trainer() -> None:
    code = (
        "import sys, tunehouse.contract.datasets, tunehouse.contract.events, tunehouse.contract.spec,"
        " tunehouse.contract.tiny;"
        "bad = {'torch', 'transformers'} & set(sys.modules) or [m for m in sys.modules"
        " if m.startswith('tunehouse.trainer')];"
        "sys.exit(str(bad) if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
