"""The hyperparameters: the trainer's typed model, and for each knob a user may set its rule on each model.

The defaults live once, on ``Hyperparameters``; a model's rules take them from there unless its profile
overrides one (the tiny model's). The core's catalog checks API input against these rules; the trainer
reads the model. Keys are canonical (snake_case); dialects rename them on the way in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRAIN_MODES = ("sft", "pretrain", "dpo")
METHODS = ("full", "lora")
TINY_MODEL = "tunehouse-tiny"
ALL_LINEAR = "all-linear"

SchedulerType = Literal["linear", "cosine", "constant"]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerType)


class Hyperparameters(BaseModel):
    # Provider APIs pass assorted extra knobs through; ignoring them keeps old specs loadable.
    model_config = ConfigDict(extra="ignore")

    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    batch_size: int = Field(4, ge=1)
    max_seq_len: int = Field(4096, ge=8)
    split_ratio: float = Field(0, ge=0, le=50)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    seed: int = 42
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    save_steps: int = Field(0, ge=0)
    logging_steps: int = Field(1, ge=0)
    eval_steps: int = Field(0, ge=0)
    step_delay: float = Field(0.0, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    packing: bool = True  # sft and pretrain only: DPO never packs (RunSpec.packing)
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = Field(1, ge=1)
    save_total_limit: int = Field(0, ge=0)  # 0 = keep all; K = the last K plus the best by eval_loss
    merge_adapter: bool = False
    lr_scheduler_type: SchedulerType = "linear"
    lora_target_modules: Literal["all-linear"] | list[str] = ALL_LINEAR

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_module_names(cls, value: Any) -> Any:
        # Forms and CLIs tend to send "q_proj,v_proj"; a list is the canonical form.
        if isinstance(value, str) and value != ALL_LINEAR:
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    # Clipping keeps tiny-lr runs sane; 0 turns it off.
    max_grad_norm: float = Field(1.0, ge=0)


# Fields of Hyperparameters that no API accepts as a hyperparameter, and why.
NOT_USER_SETTABLE = {
    "split_ratio": "the held-out percent is a run field of its own (each dialect's split)",
    "step_delay": "test-only (makes runs long): the scheduler sets it from TUNEHOUSE_TEST_STEP_DELAY",
}
# The tiny model learns in seconds on a CPU only with large steps, and its context is short.
TINY_DEFAULTS: dict[str, Any] = {"epochs": 3, "learning_rate": 1e-3, "max_seq_len": 512}
STEP_DELAY_ENV = "TUNEHOUSE_TEST_STEP_DELAY"

ValueType = Literal["int", "float", "bool", "str", "modules"]
CheckType = Literal["range", "choice", "modules"]


@dataclass(frozen=True)
class Rule:
    """What one user-settable knob takes on one model: its type, its range or choices, and its default.

    ``modules`` (lora_target_modules) is "all-linear" or a list of module names; its check_value holds
    the one special value.
    """

    key: str
    type: ValueType
    check_type: CheckType
    check_value: tuple[Any, ...]
    default: Any
    lora_only: bool = False
    modes: tuple[str, ...] = TRAIN_MODES  # the train modes that take it


def default_of(key: str, model: str) -> Any:
    if model == TINY_MODEL and key in TINY_DEFAULTS:
        return TINY_DEFAULTS[key]
    return Hyperparameters.model_fields[key].default


def rules(model: str) -> list[Rule]:
    """Every user-settable knob's rule on `model`, in the order forms and capability answers list them."""
    tiny = model == TINY_MODEL
    seq = (128, 256, 512, 1024) if tiny else (512, 1024, 2048, 4096, 8192)
    lr_high = 1e-2 if tiny else 1e-3
    lora = {"lora_only": True}
    table: list[tuple[str, ValueType, CheckType, tuple[Any, ...], dict[str, Any]]] = [
        ("epochs", "int", "range", (1, 50), {}),
        ("learning_rate", "float", "range", (1e-6, lr_high), {}),
        ("batch_size", "int", "range", (1, 64), {}),
        ("max_seq_len", "int", "choice", seq, {}),
        ("weight_decay", "float", "range", (0.0, 0.1), {}),
        ("warmup_ratio", "float", "range", (0.0, 0.5), {}),
        ("seed", "int", "range", (0, 2**31 - 1), {}),
        ("save_steps", "int", "range", (0, 1_000_000), {}),
        ("logging_steps", "int", "range", (1, 10_000), {}),
        ("eval_steps", "int", "range", (0, 1_000_000), {}),
        ("gradient_accumulation_steps", "int", "range", (1, 256), {}),
        ("save_total_limit", "int", "range", (0, 1000), {}),
        ("lora_rank", "int", "choice", (4, 8, 16, 32, 64), lora),
        ("lora_alpha", "int", "range", (1, 512), lora),
        ("lora_dropout", "float", "range", (0.0, 0.5), lora),
        ("dpo_beta", "float", "range", (0.01, 1.0), {"modes": ("dpo",)}),
        ("lr_scheduler_type", "str", "choice", SCHEDULERS, {}),
        ("max_grad_norm", "float", "range", (0.0, 100.0), {}),
        ("gradient_checkpointing", "bool", "choice", (False, True), {}),
        ("packing", "bool", "choice", (False, True), {"modes": ("sft", "pretrain")}),
        ("lora_target_modules", "modules", "modules", (ALL_LINEAR,), lora),
        ("merge_adapter", "bool", "choice", (False, True), lora),
    ]
    return [Rule(key, t, c, v, default_of(key, model), **more) for key, t, c, v, more in table]


def user_settable() -> set[str]:
    return {r.key for r in rules(TINY_MODEL)}
