"""OpenAI fine-tuning names and values, translated to and from the core's canonical ones.

Pure functions only (no database, no HTTP), so each rule can be tested on its own.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Any

from tunehouse.core.events import TRAINER_STATUS
from tunehouse.core.states import RunState

JOB_PREFIX = "ftjob-"
FILE_PREFIX = "file-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt_"
CHECKPOINT_SUFFIX = re.compile(r"^(?P<model>.+):ckpt-step-(?P<step>\d{1,9})$")
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODEL_NAME_MAX = 128  # the models table's limit
METADATA_MAX_KEYS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512

# Supervised and DPO hyperparameters as OpenAI names them → canonical keys.
HYPER_IN = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "learning_rate"}
DPO_HYPER_IN = {**HYPER_IN, "beta": "dpo_beta"}
INT_HYPER = {"n_epochs", "batch_size"}

STATUS = {
    RunState.VALIDATING: "validating_files",
    RunState.QUEUED: "queued",
    RunState.RUNNING: "running",
    # OpenAI's cancel answers with the job already cancelled; the trainer is still saving its checkpoint.
    RunState.STOPPING: "cancelled",
    RunState.PAUSING: "pausing",
    RunState.PAUSED: "paused",
    RunState.SUCCEEDED: "succeeded",
    RunState.FAILED: "failed",
    RunState.STOPPED: "cancelled",
}

METHOD_OF_MODE = {"sft": "supervised", "dpo": "dpo"}
MODE_OF_METHOD = {"supervised": "sft", "dpo": "dpo"}


class HyperparameterError(ValueError):
    """A hyperparameter value OpenAI's rules refuse; `name` is the OpenAI key."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def status_of(state: str) -> str:
    return STATUS[RunState(state)]


def job_id(key: str) -> str:
    return JOB_PREFIX + key


def file_id(key: str) -> str:
    return FILE_PREFIX + key


def _number(name: str, value: Any, integer: bool) -> float | int | None:
    """None for "auto"; the number when it is a positive one of the right kind."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HyperparameterError(name, f"{name} must be 'auto' or a positive number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HyperparameterError(name, f"{name} must be a finite number")
    if value <= 0:
        raise HyperparameterError(name, f"{name} must be positive, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise HyperparameterError(name, f"{name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def hyperparameters_in(given: dict[str, Any], method_type: str, default_lr: float) -> dict[str, Any]:
    """OpenAI hyperparameters → canonical ones; "auto" leaves the catalog default in place."""
    names = DPO_HYPER_IN if method_type == "dpo" else HYPER_IN
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in names:
            allowed = ", ".join(names)
            raise HyperparameterError(name, f"unknown hyperparameter {name!r}; {method_type} takes {allowed}")
        number = _number(name, value, name in INT_HYPER)
        if number is None:
            continue
        if name == "learning_rate_multiplier":
            number = number * default_lr
        out[names[name]] = number
    return out


def _tidy(x: float) -> float:
    # 0.003 / 0.001 is 2.9999999999999996: echo what the caller would have typed.
    return float(f"{x:.10g}")


def hyperparameters_out(resolved: dict[str, Any], method_type: str, default_lr: float) -> dict[str, Any]:
    """The resolved canonical values, echoed as concrete OpenAI numbers."""
    out: dict[str, Any] = {
        "n_epochs": int(resolved["epochs"]),
        "batch_size": int(resolved["batch_size"]),
        "learning_rate_multiplier": _tidy(float(resolved["learning_rate"]) / default_lr),
    }
    if method_type == "dpo":
        out["beta"] = float(resolved.get("dpo_beta", 0.1))
    return out


def output_name_template(base: str, org: str, suffix: str | None) -> str:
    """`ft:<base>:<org>:<suffix>:{key}`; the core fills {key} with the run key."""
    parts = ["ft", base, org, suffix or ""]
    return ":".join(p.replace("{", "{{").replace("}", "}}") for p in parts) + ":{key}"


def checkpoint_model(output_name: str, step: int) -> str:
    return f"{output_name}:ckpt-step-{step}"


def parse_checkpoint_model(name: str) -> tuple[str, int] | None:
    m = CHECKPOINT_SUFFIX.match(name)
    return (m["model"], int(m["step"])) if m else None


def check_metadata(value: Any) -> dict[str, str] | None:
    """None or a map of at most 16 string pairs (key ≤ 64, value ≤ 512 characters)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("metadata must be an object of string keys and string values")
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata holds at most {METADATA_MAX_KEYS} keys, got {len(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise ValueError(f"metadata value of {k!r} must be a string")
        if len(k) > METADATA_KEY_MAX:
            raise ValueError(f"metadata keys are at most {METADATA_KEY_MAX} characters: {k[:20]!r}…")
        if len(v) > METADATA_VALUE_MAX:
            raise ValueError(f"metadata value of {k!r} is longer than {METADATA_VALUE_MAX} characters")
    return dict(value)


# ---- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedEvent:
    level: str
    message: str
    type: str
    data: dict[str, Any]


_STATUS_MESSAGES = {
    RunState.VALIDATING: "Validating training file",
    RunState.RUNNING: "Fine-tuning job started",
    RunState.STOPPING: "Fine-tuning job cancelled; the trainer is saving a checkpoint",
    RunState.PAUSING: "Pausing the job; the trainer is saving a checkpoint",
    RunState.PAUSED: "Job paused",
    RunState.SUCCEEDED: "The job has successfully completed",
    RunState.STOPPED: "Fine-tuning job cancelled",
}


def _fmt_loss(x: Any) -> str:
    return f"{float(x):.2f}"


def render_event(
    seq: int, type_: str, payload: dict[str, Any], job: str, total_steps: int, model_name: str
) -> RenderedEvent | None:
    """One core event as an OpenAI event; None for events OpenAI does not show: per-step progress, the
    trainer's own phases, and its error report (the failed status that follows carries the same reason)."""
    if type_ == "status":
        state = RunState(payload.get("state", RunState.QUEUED))
        if state == RunState.QUEUED:
            # The first queued status is the creation; a later one is a resume (or a crash recovery).
            text = f"Created fine-tuning job: {job}" if seq == 1 else "Job resumed"
            return RenderedEvent("info", text, "message", {})
        if state == RunState.FAILED:
            return RenderedEvent(
                "error", str(payload.get("error") or "Fine-tuning job failed"), "message", {}
            )
        return RenderedEvent("info", _STATUS_MESSAGES[state], "message", {})
    if type_ == "metrics":
        step = int(payload.get("step", 0))
        data: dict[str, Any] = {"step": step, "total_steps": total_steps}
        parts = []
        if "train_loss" in payload:
            data["train_loss"] = payload["train_loss"]
            parts.append(f"training loss={_fmt_loss(payload['train_loss'])}")
            if "train_token_accuracy" in payload:
                data["train_mean_token_accuracy"] = payload["train_token_accuracy"]
            for k in ("learning_rate", "grad_norm"):
                if k in payload:
                    data[k] = payload[k]
        if "eval_loss" in payload:
            # The trainer evaluates on the whole held-out set: OpenAI's "full validation".
            data["full_valid_loss"] = payload["eval_loss"]
            parts.append(f"full validation loss={_fmt_loss(payload['eval_loss'])}")
            if "eval_token_accuracy" in payload:
                data["full_valid_mean_token_accuracy"] = payload["eval_token_accuracy"]
        return RenderedEvent("info", f"Step {step}/{total_steps}: {', '.join(parts)}", "metrics", data)
    if type_ in ("progress", TRAINER_STATUS, "error"):
        return None
    if type_ == "checkpoint":
        return RenderedEvent("info", f"Checkpoint created at step {payload.get('step')}", "message", {})
    if type_ == "checkpoint_deleted":
        return RenderedEvent("info", f"Checkpoint at step {payload.get('step')} removed", "message", {})
    if type_ == "model":
        return RenderedEvent("info", f"New fine-tuned model created: {model_name}", "message", {})
    if type_ == "log":
        return RenderedEvent("info", str(payload.get("message", "")), "message", {})
    return RenderedEvent("info", f"{type_}: {payload}", "message", {})


def keep_metrics_step(step: int, total_steps: int) -> bool:
    """Metrics events thinned to about a hundred per job (the last step always stays)."""
    every = max(1, math.ceil(total_steps / 100)) if total_steps else 1
    return step % every == 0 or step == total_steps


# ---- results ---------------------------------------------------------------------------------------

RESULT_HEADER = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def results_csv(core_csv: str) -> bytes:
    """The core's step-metrics CSV (train and eval rows apart) as OpenAI's: one row per logged step."""
    by_step: dict[int, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(core_csv)):
        try:
            step = int(row.get("step") or "")
        except ValueError:
            continue
        out = by_step.setdefault(step, {})
        if row.get("train_loss"):
            out["train_loss"] = row["train_loss"]
        if row.get("train_token_accuracy"):
            out["train_accuracy"] = row["train_token_accuracy"]
        if row.get("eval_loss"):
            out["valid_loss"] = row["eval_loss"]
        if row.get("eval_token_accuracy"):
            out["valid_mean_token_accuracy"] = row["eval_token_accuracy"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_HEADER)
    for step in sorted(by_step):
        vals = by_step[step]
        writer.writerow([step, *(_five(vals.get(k)) for k in RESULT_HEADER[1:])])
    return buf.getvalue().encode()


def _five(value: str | None) -> str:
    if not value:
        return ""
    try:
        return f"{float(value):.5f}"
    except ValueError:
        return ""
