"""The OpenAI and DashScope create bodies as typed schemas that answer in each dialect's own terms."""

from __future__ import annotations

import importlib

import pytest

from tunehouse.api.dashscope.errors import ApiError
from tunehouse.api.dashscope.schemas import CreateFineTune
from tunehouse.api.openai.errors import OpenAIError
from tunehouse.api.openai.schemas import CreateFineTuningJob
from tunehouse.core.errors import InvalidParameter


def test_an_openai_body_is_refused_for_its_first_bad_field_in_the_order_openai_checks_them() -> None:
    with pytest.raises(OpenAIError) as caught:
        CreateFineTuningJob.model_validate({"model": "tiny", "training_file": 7, "seed": "x"})
    assert (caught.value.status, caught.value.message) == (400, "training_file must be a string.")
    assert (caught.value.param, caught.value.code) == ("training_file", "invalid_type")


def test_a_missing_openai_field_names_the_parameter_as_openai_does() -> None:
    with pytest.raises(OpenAIError) as caught:
        CreateFineTuningJob.model_validate({"training_file": "file-x"})
    assert caught.value.message == "Missing required parameter: 'model'."
    assert caught.value.param == "model"


def test_top_level_hyperparameters_fill_the_supervised_method_and_errors_name_where_they_came_from() -> None:
    body = CreateFineTuningJob.model_validate(
        {"model": "tiny", "training_file": "file-x", "hyperparameters": {"n_epochs": 2}}
    )
    assert body.method.type == "supervised"
    assert body.method.hyperparameters == {"n_epochs": 2}
    assert body.method.where == "hyperparameters"


def test_top_level_hyperparameters_that_contradict_the_methods_are_refused() -> None:
    with pytest.raises(OpenAIError) as caught:
        CreateFineTuningJob.model_validate(
            {
                "model": "tiny",
                "training_file": "file-x",
                "hyperparameters": {"n_epochs": 2},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
            }
        )
    assert caught.value.param == "hyperparameters.n_epochs"
    assert caught.value.code == "invalid_hyperparameters"


def test_an_empty_openai_validation_file_or_suffix_reads_as_none() -> None:
    body = CreateFineTuningJob.model_validate(
        {"model": "tiny", "training_file": "file-x", "validation_file": "", "suffix": ""}
    )
    assert (body.validation_file, body.suffix, body.integrations) == (None, None, [])


def test_a_dashscope_bare_file_id_is_taken_as_a_list_of_one() -> None:
    body = CreateFineTune.model_validate({"model": "tiny", "training_file_ids": "file-ft-x"})
    assert body.training_file_ids == ["file-ft-x"]
    assert body.validation_file_ids == []
    assert (body.training_type.train_mode, body.hyper_parameters) == ("sft", {})


def test_a_dashscope_body_without_training_files_is_refused_in_dashscope_terms() -> None:
    with pytest.raises(ApiError) as caught:
        CreateFineTune.model_validate({"model": "tiny"})
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "InvalidParameter",
        "Missing training files",
    )


def test_an_unknown_dashscope_training_type_is_refused_under_its_own_field_name() -> None:
    with pytest.raises(InvalidParameter) as caught:
        CreateFineTune.model_validate({"model": "tiny", "training_file_ids": ["f"], "training_type": "rlhf"})
    assert caught.value.field == "training_type"


def test_the_dashscope_output_name_fields_are_left_for_the_check_made_once_the_model_is_resolved() -> None:
    body = CreateFineTune.model_validate({"model": "tiny", "training_file_ids": ["f"], "model_name": 5})
    assert body.model_name == 5


@pytest.mark.parametrize("dialect", ["qianfan", "openai", "dashscope"])
def test_each_api_dialect_package_holds_its_names_auth_and_error_mapping(dialect: str) -> None:
    for part in ("names", "auth", "errors"):
        importlib.import_module(f"tunehouse.api.{dialect}.{part}")
