"""The console's new-run form: each hyperparameter field parses to its knob's type."""

from __future__ import annotations

from tunehouse.api.console.views import capabilities_spec, parse_hyperparameters
from tunehouse.core.catalog import TINY_MODEL


def test_the_form_offers_every_knob_the_catalog_has_for_the_mode_and_method() -> None:
    fields = {p["key"] for p in capabilities_spec({TINY_MODEL: TINY_MODEL})[TINY_MODEL]["sft"]["lora"]}
    assert {"lr_scheduler_type", "gradient_checkpointing", "lora_target_modules", "merge_adapter"} <= fields


def test_bool_choice_and_module_fields_parse_to_their_types() -> None:
    form = {
        "hp.gradient_checkpointing": "true",
        "hp.merge_adapter": "false",
        "hp.lr_scheduler_type": "cosine",
        "hp.lora_target_modules": "q_proj, v_proj",
        "hp.epochs": "2",
    }
    values, errors = parse_hyperparameters(form)
    assert errors == {}
    assert values == {
        "gradient_checkpointing": True,
        "merge_adapter": False,
        "lr_scheduler_type": "cosine",
        "lora_target_modules": "q_proj, v_proj",
        "epochs": 2,
    }


def test_a_bool_field_with_another_word_is_a_field_error() -> None:
    assert parse_hyperparameters({"hp.merge_adapter": "yes"})[1] == {"merge_adapter": "must be true or false"}
