"""What each base model can be trained with: train modes, methods and hyperparameter rules.

The rules, types and defaults come from the run contract (tunehouse.contract.hyperparameters); this module
checks API input against them. Keys are canonical (snake_case); dialects rename them on the way in and out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tunehouse.contract.hyperparameters import ALL_LINEAR, METHODS, TINY_MODEL, TRAIN_MODES, Rule, rules
from tunehouse.core.errors import InvalidParameter

__all__ = ["METHODS", "TINY_MODEL", "TRAIN_MODES", "HyperParam", "ModelCapabilities", "capabilities"]

_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]{1,100}$")
_MAX_MODULES = 64


@dataclass(frozen=True)
class HyperParam(Rule):
    def check(self, value: Any) -> Any:
        """The value coerced to this parameter's type; InvalidParameter when it breaks the rule."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise InvalidParameter(self.key, "must be true or false")
            return value
        if self.type == "str":
            if not isinstance(value, str) or value not in self.check_value:
                raise InvalidParameter(self.key, f"must be one of {', '.join(self.check_value)}")
            return value
        if self.type == "modules":
            return self._modules(value)
        return self._number(value)

    def _modules(self, value: Any) -> str | list[str]:
        if value == ALL_LINEAR:
            return ALL_LINEAR
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= _MAX_MODULES
            or not all(isinstance(n, str) and _MODULE_NAME.match(n) for n in value)
        ):
            raise InvalidParameter(
                self.key, f"must be {ALL_LINEAR!r} or a list of module names such as q_proj, v_proj"
            )
        return list(value)

    def _number(self, value: Any) -> float:
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
    table = [HyperParam(**vars(rule)) for rule in rules(model)]

    def params(mode: str, method: str) -> list[HyperParam]:
        return [p for p in table if (method == "lora" or not p.lora_only) and mode in p.modes]

    modes = {mode: {method: params(mode, method) for method in METHODS} for mode in TRAIN_MODES}
    return ModelCapabilities(model=model, model_type="text2text", modes=modes)


@lru_cache(maxsize=256)
def default_of(model: str, train_mode: str, method: str, key: str) -> Any:
    """One hyperparameter's default, remembered: renderings ask on every request, the rules never change."""
    return next(p.default for p in capabilities(model).params_for(train_mode, method) if p.key == key)
