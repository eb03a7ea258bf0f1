"""DashScope's names for the core's concepts: job ids, statuses, training types, hyper-parameters, times."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from tunehouse.contract.hyperparameters import SCHEDULERS
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.events import TRAINER_STATUS
from tunehouse.core.ids import KEY_LEN
from tunehouse.core.states import RunState

JOB_PREFIX = "ft-"
FILE_PREFIX = "file-"

# training_type ↔ (core train mode, method). The core also knows LoRA pre-training, which DashScope
# cannot name; such runs (created through another dialect) read back as "cpt".
TRAINING_TYPES: dict[str, tuple[str, str]] = {
    "sft": ("sft", "full"),
    "efficient_sft": ("sft", "lora"),
    "dpo_full": ("dpo", "full"),
    "dpo_lora": ("dpo", "lora"),
    "cpt": ("pretrain", "full"),
}
_TRAINING_TYPE_OUT = {v: k for k, v in TRAINING_TYPES.items()} | {("pretrain", "lora"): "cpt"}

PENDING, QUEUING, RUNNING, CANCELING = "PENDING", "QUEUING", "RUNNING", "CANCELING"
SUCCEEDED, FAILED, CANCELED = "SUCCEEDED", "FAILED", "CANCELED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

# DESIGN.md's table. A paused run (paused through another dialect) reads as CANCELED.
STATUS = {
    RunState.VALIDATING: PENDING,
    RunState.QUEUED: QUEUING,
    RunState.RUNNING: RUNNING,
    RunState.STOPPING: CANCELING,
    RunState.PAUSING: CANCELED,
    RunState.PAUSED: CANCELED,
    RunState.SUCCEEDED: SUCCEEDED,
    RunState.FAILED: FAILED,
    RunState.STOPPED: CANCELED,
}

# DashScope hyper-parameter names that differ from the core's; every other key keeps its name.
HP_IN = {"n_epochs": "epochs", "max_length": "max_seq_len"}
HP_OUT = {v: k for k, v in HP_IN.items()}
DEFAULT_SPLIT = 0.8
# Checked against the spec's rules, then passed on under their own (canonical) names. The core trains
# with lr_scheduler_type and max_grad_norm; target_modules and max_split_val_dataset_sample are echoed only:
# AUTO and ALL both mean every linear layer, the core's default lora_target_modules.
TARGET_MODULES = ("AUTO", "ALL")
LR_SCHEDULERS = SCHEDULERS  # the spec's inverse_sqrt and polynomial have no trainer schedule behind them

_JOB_ID = re.compile(rf"^ft-(?:(\d{{12}})-)?([a-z0-9]{{{KEY_LEN}}})$")


def job_id(key: str, created_at: datetime) -> str:
    """`ft-{yyyyMMddHHmm}-{key}`: the spec's shape, with the run's canonical key as its unique tail.

    The minute is taken in UTC so that an id never changes with the server's time zone.
    """
    return f"{JOB_PREFIX}{created_at.astimezone(UTC):%Y%m%d%H%M}-{key}"


def parse_job_id(ident: str) -> tuple[str, str | None] | None:
    """(run key, minute stamp or None) for `ft-{stamp}-{key}` or the bare `ft-{key}`; None otherwise."""
    m = _JOB_ID.match(ident)
    return (m.group(2), m.group(1)) if m else None


def stamp_matches(stamp: str | None, created_at: datetime) -> bool:
    return stamp is None or stamp == f"{created_at.astimezone(UTC):%Y%m%d%H%M}"


def ds_time(t: datetime | None) -> str:
    """`YYYY-MM-DD HH:MM:SS` in the server's local time, as the hosted service writes it."""
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else ""


def status_of(state: str) -> str:
    return STATUS[RunState(state)]


def event_status(payload: dict[str, Any]) -> str:
    """The DashScope status a status event (a state the server moved the run to) announces."""
    return STATUS[RunState(str(payload.get("state")))]


def training_type_in(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or value not in TRAINING_TYPES:
        raise InvalidParameter("training_type", f"must be one of {', '.join(TRAINING_TYPES)}")
    return TRAINING_TYPES[value]


def training_type_out(train_mode: str, method: str) -> str:
    return _TRAINING_TYPE_OUT.get((train_mode, method), train_mode)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> int:
    if not _number(value) or (isinstance(value, float) and not value.is_integer()) or value < 1:
        raise InvalidParameter(key, "must be an integer >= 1")
    return int(value)


def learning_rate_in(value: Any) -> float:
    """A number or a numeric string (the docs write "1.6e-5"); it must be a positive finite float."""
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            raise InvalidParameter("learning_rate", f"{value!r} is not a number") from None
    elif _number(value):
        parsed = float(value)
    else:
        raise InvalidParameter("learning_rate", "must be a number or a numeric string")
    if not math.isfinite(parsed) or parsed <= 0:
        raise InvalidParameter("learning_rate", "must be a positive number")
    return parsed


def max_length_in(value: Any, choices: tuple[float, ...]) -> int:
    """Any length is accepted; the run trains at the smallest sequence length offered that holds it."""
    length = _positive_int("max_length", value)
    fitting = sorted(int(c) for c in choices if c >= length)
    if not fitting:
        top = int(max(choices))
        raise InvalidParameter("max_length", f"must be at most {top} for this model")
    return fitting[0]


def split_in(value: Any) -> int:
    """The training share in (0, 1) → the core's held-out percent, which it takes within [0, 50]."""
    if not _number(value) or not 0 < value < 1:
        raise InvalidParameter("split", "must be a number between 0 and 1 (exclusive)")
    ratio = round((1 - value) * 100)
    if ratio > 50:
        raise InvalidParameter("split", "must be at least 0.5: at most half of the data can be held out")
    return ratio


def _check_echo_only(key: str, value: Any) -> None:
    if key == "max_split_val_dataset_sample":
        _positive_int(key, value)
    elif key == "lr_scheduler_type":
        if value not in LR_SCHEDULERS:
            raise InvalidParameter(key, f"must be one of {', '.join(LR_SCHEDULERS)}")
    elif key == "max_grad_norm":
        if not _number(value) or not math.isfinite(value) or value <= 0:
            raise InvalidParameter(key, "must be a positive number")
    elif key == "target_modules" and value not in TARGET_MODULES:
        raise InvalidParameter(key, f"must be one of {', '.join(TARGET_MODULES)}")


def hyperparameters_in(
    given: dict[str, Any], seq_choices: tuple[float, ...], has_validation: bool
) -> tuple[dict[str, Any], int]:
    """DashScope hyper_parameters → (core hyperparameters, held-out percent).

    Known keys are renamed and pre-checked where DashScope's rules differ from the core's (string
    learning rates, free max_length, split as a share); the core checks the rest and keeps unknown keys.
    """
    out: dict[str, Any] = {}
    split_ratio = 0 if has_validation else split_in(DEFAULT_SPLIT)
    for key, value in given.items():
        if key == "learning_rate":
            out["learning_rate"] = learning_rate_in(value)
        elif key == "max_length":
            out["max_seq_len"] = max_length_in(value, seq_choices)
        elif key == "split":
            ratio = split_in(value)
            # With validation files nothing is split off (the spec: split applies only without them).
            split_ratio = 0 if has_validation else ratio
        elif key in ("max_split_val_dataset_sample", "lr_scheduler_type", "max_grad_norm", "target_modules"):
            _check_echo_only(key, value)
            out[key] = value
        else:
            out[HP_IN.get(key, key)] = value
    return out, split_ratio


def hyperparameters_out(resolved: dict[str, Any], split_ratio: int) -> dict[str, Any]:
    """A run created through another dialect: its resolved values under DashScope's names."""
    out = {HP_OUT.get(k, k): v for k, v in resolved.items()}
    if split_ratio:
        out["split"] = round(1 - split_ratio / 100, 2)
    return out


def field_out(field: str) -> str:
    """A core field name in the caller's terms."""
    if field in HP_OUT:
        return f"hyper_parameters.{HP_OUT[field]}"
    renames = {
        "train_mode": "training_type",
        "method": "training_type",
        "datasets": "training_file_ids",
        "validation": "validation_file_ids",
        "output_name": "model_name",
        "split_ratio": "hyper_parameters.split",
        "increment_from": "model",
    }
    if field in renames:
        return renames[field]
    known_top = {
        "model",
        "training_file_ids",
        "validation_file_ids",
        "training_type",
        "model_name",
        "job_name",
    }
    return field if field in known_top or "." in field else f"hyper_parameters.{field}"


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def log_line(time: datetime, type_: str, payload: dict[str, Any]) -> str:
    """One event of a run's record as one human-readable log line."""
    p = payload
    if type_ == "status":
        text = f"status: {event_status(p)}"
        if p.get("error"):
            text += f" ({p['error']})"
    elif type_ == TRAINER_STATUS:
        text = f"trainer: {p.get('state')}"
    elif type_ == "log":
        text = str(p.get("message", ""))
    elif type_ == "progress":
        text = f"progress: step {p.get('step')}/{p.get('total_steps')} ({p.get('percent')}%)"
        extras = [f"{k}={_num(p[k])}" for k in ("epoch", "tokens_per_second", "eta_seconds") if k in p]
        if extras:
            text += ", " + ", ".join(extras)
    elif type_ == "metrics":
        values = ", ".join(f"{k}={_num(v)}" for k, v in p.items() if k != "step")
        text = f"metrics: step {p.get('step')}: {values}"
    elif type_ == "checkpoint":
        text = f"checkpoint saved at step {p.get('step')}"
    elif type_ == "checkpoint_deleted":
        text = f"checkpoint at step {p.get('step')} removed (rotation)"
    elif type_ == "model":
        text = f"model saved ({p.get('kind', 'full')})"
    elif type_ == "error":
        text = f"error: {p.get('reason', '')}"
    else:
        text = f"{type_}: {json.dumps(p, sort_keys=True)}"
    # One event, one line: the logs API and the event stream both promise single lines.
    return f"{ds_time(time)} {' '.join(text.splitlines())}"
