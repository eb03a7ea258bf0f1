"""The DashScope dialect's request bodies, as Pydantic models.

Each field keeps the check its DashScope answer depends on: a validator that raises the dialect's ApiError
(or the core's InvalidParameter, in the caller's field names), which Pydantic lets through unchanged. Fields
are validated in the order they are declared, so the first bad field of a body is the one answered.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunehouse.api.dashscope import names
from tunehouse.api.dashscope.errors import invalid
from tunehouse.contract.datasets import formats_for_train_mode


def optional_str(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string")
    return value


class TrainingType(BaseModel):
    """`training_type` as the core's (train mode, method)."""

    train_mode: str
    method: str


class CreateFineTune(BaseModel):
    """POST /api/v1/fine-tunes."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default=None, validate_default=True)  # type: ignore[assignment]
    training_file_ids: list[str] = Field(default=None, validate_default=True)  # type: ignore[assignment]
    validation_file_ids: list[str] = Field(default=None, validate_default=True)  # type: ignore[assignment]
    training_type: TrainingType = Field(default=None, validate_default=True)  # type: ignore[assignment]
    hyper_parameters: dict[str, Any] = Field(default=None, validate_default=True)  # type: ignore[assignment]
    job_name: str | None = None
    # The output name's fields are checked where the name is chosen, after the model and the files are
    # resolved, as they always were: a body wrong in both answers with the model or file first.
    model_name: Any = None
    finetuned_output: Any = None  # the 1.x SDK's name for model_name
    finetuned_output_suffix: Any = None

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, model: Any) -> str:
        if not isinstance(model, str) or not model:
            raise invalid("Missing model")
        return model

    @field_validator("training_file_ids", "validation_file_ids", mode="before")
    @classmethod
    def _id_list(cls, value: Any, info: ValidationInfo) -> list[str]:
        field = str(info.field_name)
        if isinstance(value, str):  # the SDKs wrap a bare string, curl users may not
            value = [value]
        if value is None or value == []:
            if field == "training_file_ids":
                raise invalid("Missing training files")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise invalid(f"{field} must be a list of file ids")
        return value

    @field_validator("training_type", mode="before")
    @classmethod
    def _training_type(cls, value: Any) -> TrainingType:
        value = value or "sft"
        train_mode, method = names.training_type_in(value)
        try:
            formats_for_train_mode(train_mode)
        except ValueError:
            raise invalid(f"training_type {value} is not supported by this server yet") from None
        return TrainingType(train_mode=train_mode, method=method)

    @field_validator("hyper_parameters", mode="before")
    @classmethod
    def _hyper_parameters(cls, value: Any) -> dict[str, Any]:
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise invalid("hyper_parameters must be an object")
        return value

    @field_validator("job_name", mode="before")
    @classmethod
    def _job_name(cls, value: Any) -> str | None:
        name = optional_str(value, "job_name")
        if name is not None and len(name) > 128:
            raise invalid("job_name: at most 128 characters")
        return name
