"""The OpenAI dialect's request bodies, as Pydantic models.

Each field keeps the check its OpenAI answer depends on (message, param, code): a validator that raises the
dialect's OpenAIError, which Pydantic lets through unchanged. Fields are validated in the order they are
declared, so the first bad field of a body is the one answered, as before these models existed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunehouse.api.openai import names
from tunehouse.api.openai.errors import OpenAIError


def _required_str(value: Any, field: str) -> str:
    if value is None or value == "":
        raise OpenAIError(400, f"Missing required parameter: '{field}'.", param=field)
    if not isinstance(value, str):
        raise OpenAIError(400, f"{field} must be a string.", param=field, code="invalid_type")
    return value


class MethodChoice(BaseModel):
    """The fine-tuning method and its hyperparameters, merged from `method` and the legacy top level."""

    type: str
    hyperparameters: dict[str, Any]
    where: str  # the param path the hyperparameters came from, for errors that name one


class CreateFineTuningJob(BaseModel):
    """POST /v1/fine_tuning/jobs."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default=None, validate_default=True)  # type: ignore[assignment]
    training_file: str = Field(default=None, validate_default=True)  # type: ignore[assignment]
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None  # the legacy, supervised-only form of method's
    method: MethodChoice = Field(default=None, validate_default=True)  # type: ignore[assignment]
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] = Field(default=None, validate_default=True)  # type: ignore[assignment]

    @field_validator("model", "training_file", mode="before")
    @classmethod
    def _required(cls, value: Any, info: ValidationInfo) -> str:
        return _required_str(value, str(info.field_name))

    @field_validator("validation_file", mode="before")
    @classmethod
    def _validation_file(cls, value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise OpenAIError(400, "validation_file must be a string.", param="validation_file")
        return value or None

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _legacy(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise OpenAIError(400, "hyperparameters must be an object.", param="hyperparameters")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, method: Any, info: ValidationInfo) -> MethodChoice:
        legacy = info.data.get("hyperparameters")
        if method is None:
            method = {"type": "supervised"}
        if not isinstance(method, dict) or not isinstance(method.get("type"), str):
            raise OpenAIError(400, "method must be an object with a 'type'.", param="method.type")
        kind = method["type"]
        if kind not in names.MODE_OF_METHOD:
            raise OpenAIError(
                400,
                f"Fine-tuning method {kind!r} is not supported by this server; use 'supervised' or 'dpo'.",
                param="method",
                code="unsupported_method",
            )
        section = method.get(kind) or {}
        if not isinstance(section, dict):
            raise OpenAIError(400, f"method.{kind} must be an object.", param=f"method.{kind}")
        hyper = section.get("hyperparameters") or {}
        if not isinstance(hyper, dict):
            raise OpenAIError(
                400,
                f"method.{kind}.hyperparameters must be an object.",
                param=f"method.{kind}.hyperparameters",
            )
        where = f"method.{kind}.hyperparameters"
        if legacy:
            if kind != "supervised":
                raise OpenAIError(
                    400,
                    "Top-level hyperparameters apply to supervised jobs; use method.dpo.hyperparameters.",
                    param="hyperparameters",
                )
            for k, v in legacy.items():
                if k in hyper and hyper[k] != v:
                    raise OpenAIError(
                        400,
                        f"hyperparameters.{k} ({v!r}) conflicts with {where}.{k} ({hyper[k]!r}).",
                        param=f"hyperparameters.{k}",
                        code="invalid_hyperparameters",
                    )
            if not hyper:
                where = "hyperparameters"
            hyper = {**legacy, **hyper}
        return MethodChoice(type=kind, hyperparameters=hyper, where=where)

    @field_validator("suffix", mode="before")
    @classmethod
    def _suffix(cls, suffix: Any) -> str | None:
        if suffix is None or suffix == "":
            return None
        if not isinstance(suffix, str) or not names.SUFFIX_RE.match(suffix):
            raise OpenAIError(
                400, "suffix must be 1-64 letters, digits, '-' or '_'.", param="suffix", code="invalid_value"
            )
        return suffix

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, seed: Any) -> int | None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise OpenAIError(400, "seed must be an integer.", param="seed", code="invalid_type")
        return seed

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> dict[str, str] | None:
        try:
            return names.check_metadata(value)
        except ValueError as e:
            raise OpenAIError(400, str(e), param="metadata", code="invalid_value") from None

    @field_validator("integrations", mode="before")
    @classmethod
    def _integrations(cls, value: Any) -> list[Any]:
        """Stored and echoed; this server sends nothing to Weights & Biases."""
        if value is None:
            return []
        ok = isinstance(value, list) and all(
            isinstance(i, dict)
            and i.get("type") == "wandb"
            and isinstance(i.get("wandb"), dict)
            and isinstance(i["wandb"].get("project"), str)
            for i in value
        )
        if not ok:
            raise OpenAIError(
                400,
                "integrations must be a list of {type: 'wandb', wandb: {project, ...}}.",
                param="integrations",
            )
        return list(value)
