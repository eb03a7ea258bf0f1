"""Qianfan's names for the core's concepts (enums, hyperparameter keys, statuses, times), both ways."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tunehouse.contract.hyperparameters import ALL_LINEAR
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.states import RunState

TRAIN_MODE_IN = {"SFT": "sft", "PostPretrain": "pretrain", "DPO": "dpo", "KTO": "kto"}
TRAIN_MODE_OUT = {v: k for k, v in TRAIN_MODE_IN.items()}
SCALE_IN = {"FullFineTuning": "full", "LoRA": "lora", "PromptTuning": "prompt_tuning"}
SCALE_OUT = {v: k for k, v in SCALE_IN.items()}
# V1 names the method peftType; ALL means every parameter (full fine-tuning).
PEFT_IN = {"ALL": "full", "FullFineTuning": "full", "LoRA": "lora"}
PEFT_OUT = {"full": "ALL", "lora": "LoRA"}

HP_IN = {
    "epoch": "epochs",
    "learningRate": "learning_rate",
    "batchSize": "batch_size",
    "maxSeqLen": "max_seq_len",
    "weightDecay": "weight_decay",
    "warmupRatio": "warmup_ratio",
    "seed": "seed",
    "loraRank": "lora_rank",
    "loraAlpha": "lora_alpha",
    "loraDropout": "lora_dropout",
    "saveSteps": "save_steps",
    "loggingSteps": "logging_steps",
    "evalSteps": "eval_steps",
    "gradientAccumulationSteps": "gradient_accumulation_steps",
    "saveTotalLimit": "save_total_limit",
    "dpoBeta": "dpo_beta",
    "schedulerName": "lr_scheduler_type",
    "maxGradNorm": "max_grad_norm",
    "gradientCheckpointing": "gradient_checkpointing",
    "packing": "packing",
    "loraTargetModules": "lora_target_modules",
    "mergeAdapter": "merge_adapter",
}
HP_OUT = {v: k for k, v in HP_IN.items()}
# Other spellings callers send: the SDK's trainer writes Packing; loraAllLinear=true is every linear layer.
HP_ALIASES = {"Packing": "packing", "loraAllLinear": "lora_target_modules"}

V2_STATUS = {
    RunState.VALIDATING: "Waiting",
    RunState.QUEUED: "Waiting",
    RunState.RUNNING: "Running",
    RunState.STOPPING: "Running",
    RunState.PAUSING: "Stopped",
    RunState.PAUSED: "Stopped",
    RunState.SUCCEEDED: "Done",
    RunState.FAILED: "Failed",
    RunState.STOPPED: "Stopped",
}
V1_STATUS = {
    RunState.VALIDATING: "RUNNING",
    RunState.QUEUED: "RUNNING",
    RunState.RUNNING: "RUNNING",
    RunState.STOPPING: "RUNNING",
    RunState.PAUSING: "STOP",
    RunState.PAUSED: "STOP",
    RunState.SUCCEEDED: "FINISH",
    RunState.FAILED: "FAIL",
    RunState.STOPPED: "STOP",
}

V2_NO_TIME = "0000-00-00T00:00:00Z"
V1_NO_TIME = "0000-00-00 00:00:00"


def v2_time(t: datetime | None) -> str:
    # What strftime("%Y-%m-%dT%H:%M:%SZ") writes, at a fraction of its cost (two per polled task).
    if not t:
        return V2_NO_TIME
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (t.year, t.month, t.day, t.hour, t.minute, t.second)  # noqa: UP031


def v1_time(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else V1_NO_TIME


def enum_in(table: dict[str, str], value: Any, field: str) -> str:
    if value not in table:
        raise InvalidParameter(field, f"must be one of {', '.join(table)}")
    return table[value]


def hyperparameters_in(config: Any, field: str = "hyperParameterConfig") -> dict[str, Any]:
    """Qianfan camelCase keys → canonical; keys we do not know are kept as they came."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidParameter(field, "must be an object")
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k == "loraAllLinear":
            if v not in (True, "true", "True"):
                why = "only true is supported; name the modules in loraTargetModules"
                raise InvalidParameter(f"{field}.{k}", why)
            v = ALL_LINEAR
        out[HP_IN.get(k) or HP_ALIASES.get(k, k)] = v
    return out


V2_FIELDS = {
    "train_mode": "trainMode",
    "method": "parameterScale",
    "split_ratio": "datasetConfig.splitRatio",
    "datasets": "datasetConfig.versions",
    "sampling_rate": "datasetConfig.versions[].samplingRate",
    "increment_from": "incrementTaskId",
    "increment_step": "incrementCheckpointStep",
    "gpus": "resourceConfig.gpus",
}
V1_FIELDS = {
    "train_mode": "trainMode",
    "method": "peftType",
    "split_ratio": "trainsetRate",
    "datasets": "trainset",
    "model": "trainType",
}


def field_name(
    canonical: str, hp_prefix: str = "hyperParameterConfig", fields: dict[str, str] = V2_FIELDS
) -> str:
    """The name a Qianfan caller knows a core field by, for error messages."""
    if canonical in HP_OUT:
        return f"{hp_prefix}.{HP_OUT[canonical]}"
    return fields.get(canonical, canonical)


def checkpoint_item(step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"step": step}
    names = {"train_loss": "trainLoss", "eval_loss": "evalLoss", "eval_token_accuracy": "evalTokenAccuracy"}
    for k, out in names.items():
        if metrics.get(k) is not None:
            item[out] = metrics[k]
    if metrics.get("perplexity") is not None:
        item["perplexity"] = metrics["perplexity"]
    return item
