"""What each base model can be trained with: train modes, methods and hyperparameter rules.

Keys are canonical (snake_case, as the trainer takes them); dialects rename them on the way in and out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunehouse.core.errors import InvalidParameter

TRAIN_MODES = ("sft", "pretrain", "dpo")
METHODS = ("full", "lora")
TINY_MODEL = "tunehouse-tiny"


@dataclass(frozen=True)
class HyperParam:
    key: str
    type: str  # "int" | "float"
    check_type: str  # "range" | "choice"
    check_value: tuple[float, ...]
    default: float
    lora_only: bool = False
    dpo_only: bool = False

    def check(self, value: Any) -> float:
        """The value coerced to this parameter's type; InvalidParameter when it breaks the rule."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParameter(self.key, f"must be a number ({self.type})")
        # JSON admits 1e999 (inf) and 400-digit integers: refuse them before any conversion can overflow.
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParameter(self.key, "must be a finite number")
        if isinstance(value, int) and abs(value) > 2**53:
            raise InvalidParameter(self.key, "is out of range")
        if self.type == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InvalidParameter(self.key, "must be an integer")
            value = int(value)
        else:
            value = float(value)
        if self.check_type == "range":
            low, high = self.check_value
            if not low <= value <= high:
                raise InvalidParameter(self.key, f"must be within [{_fmt(low)}, {_fmt(high)}]")
        elif value not in self.check_value:
            choices = ", ".join(_fmt(v) for v in self.check_value)
            raise InvalidParameter(self.key, f"must be one of {choices}")
        return value


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) >= 1 else f"{v:g}"


def _table(tiny: bool) -> list[HyperParam]:
    # The tiny model learns in seconds on a CPU only with large steps; real models want the usual ranges.
    lr = (
        HyperParam("learning_rate", "float", "range", (1e-6, 1e-2), 1e-3)
        if tiny
        else HyperParam("learning_rate", "float", "range", (1e-6, 1e-3), 3e-5)
    )
    seq = (128, 256, 512, 1024) if tiny else (512, 1024, 2048, 4096, 8192)
    return [
        HyperParam("epochs", "int", "range", (1, 50), 3 if tiny else 1),
        lr,
        HyperParam("batch_size", "int", "range", (1, 64), 4),
        HyperParam("max_seq_len", "int", "choice", seq, 512 if tiny else 4096),
        HyperParam("weight_decay", "float", "range", (0.0, 0.1), 0.01),
        HyperParam("warmup_ratio", "float", "range", (0.0, 0.5), 0.0),
        HyperParam("seed", "int", "range", (0, 2**31 - 1), 42),
        HyperParam("save_steps", "int", "range", (0, 1_000_000), 0),
        HyperParam("logging_steps", "int", "range", (1, 10_000), 1),
        HyperParam("eval_steps", "int", "range", (0, 1_000_000), 0),
        HyperParam("gradient_accumulation_steps", "int", "range", (1, 256), 1),
        HyperParam("save_total_limit", "int", "range", (0, 1000), 0),
        HyperParam("lora_rank", "int", "choice", (4, 8, 16, 32, 64), 8, lora_only=True),
        HyperParam("lora_alpha", "int", "range", (1, 512), 16, lora_only=True),
        HyperParam("lora_dropout", "float", "range", (0.0, 0.5), 0.05, lora_only=True),
        HyperParam("dpo_beta", "float", "range", (0.01, 1.0), 0.1, dpo_only=True),
    ]


@dataclass(frozen=True)
class ModelCapabilities:
    model: str
    model_type: str
    # train mode → method → the hyperparameters that method takes
    modes: dict[str, dict[str, list[HyperParam]]]

    def params_for(self, train_mode: str, method: str) -> list[HyperParam]:
        if train_mode not in self.modes:
            supported = ", ".join(self.modes)
            raise InvalidParameter("train_mode", f"model {self.model} supports train modes: {supported}")
        if method not in self.modes[train_mode]:
            supported = ", ".join(self.modes[train_mode])
            raise InvalidParameter("method", f"{train_mode} on {self.model} supports: {supported}")
        return self.modes[train_mode][method]

    def resolve(self, train_mode: str, method: str, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in and every known key checked; unknown keys are left to the caller to keep."""
        params = self.params_for(train_mode, method)
        out: dict[str, Any] = {}
        for p in params:
            raw = given.get(p.key)
            out[p.key] = p.default if raw is None else p.check(raw)
        for p in params:
            if p.type == "int":
                out[p.key] = int(out[p.key])
        return out


def capabilities(model: str) -> ModelCapabilities:
    table = _table(tiny=model == TINY_MODEL)

    def params(mode: str, method: str) -> list[HyperParam]:
        return [
            p for p in table if (method == "lora" or not p.lora_only) and (mode == "dpo" or not p.dpo_only)
        ]

    modes = {mode: {method: params(mode, method) for method in METHODS} for mode in TRAIN_MODES}
    return ModelCapabilities(model=model, model_type="text2text", modes=modes)
