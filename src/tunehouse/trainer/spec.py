"""The run spec the server writes and the exit codes it reads back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_DATA_INVALID = 2
EXIT_STOPPED = 3
EXIT_NO_SPACE = 4  # the disk filled up; said in an error event too when there was room to say it

Method = Literal["lora", "full"]
TrainMode = Literal["sft", "pretrain", "dpo"]
InitKind = Literal["lora_adapter", "full"]
SchedulerType = Literal["linear", "cosine", "constant"]


class Hyperparameters(BaseModel):
    # Provider APIs pass assorted extra knobs through; ignoring them keeps old specs loadable.
    model_config = ConfigDict(extra="ignore")

    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    batch_size: int = Field(4, ge=1)
    max_seq_len: int = Field(512, ge=8)
    split_ratio: float = Field(0, ge=0, le=50)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    seed: int = 42
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    save_steps: int = Field(0, ge=0)
    logging_steps: int = Field(1, ge=0)
    eval_steps: int = Field(0, ge=0)
    step_delay: float = Field(0.0, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    # None = the mode's default: on for sft and pretrain; DPO never packs.
    packing: bool | None = None
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = Field(1, ge=1)
    save_total_limit: int = Field(0, ge=0)  # 0 = keep all; K = the last K plus the best by eval_loss
    merge_adapter: bool = False
    lr_scheduler_type: SchedulerType = "linear"
    lora_target_modules: Literal["all-linear"] | list[str] = "all-linear"

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_module_names(cls, value: Any) -> Any:
        # Forms and CLIs tend to send "q_proj,v_proj"; a list is the canonical form.
        if isinstance(value, str) and value != "all-linear":
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    # Not part of the server contract; clipping keeps tiny-lr runs sane and 0 turns it off.
    max_grad_norm: float = Field(1.0, ge=0)


class InitFrom(BaseModel):
    """Starting weights for incremental training; unlike resume_from the optimizer starts fresh."""

    model_config = ConfigDict(extra="ignore")

    path: Path
    kind: InitKind


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str
    model_path: Path
    method: Method = "lora"
    train_mode: TrainMode = "sft"
    train_files: list[Path] = Field(min_length=1)
    validation_files: list[Path] = Field(default_factory=list)
    output_dir: Path
    resume_from: Path | None = None
    init_from: InitFrom | None = None
    cache_dir: Path | None = None  # shared tokenization cache; None = tokenize without caching
    # A model without a chat template: render conversations as ChatML (with a warning) or refuse chat data.
    chat_template_fallback: Literal["chatml", "refuse"] = "chatml"
    # Bytes a checkpoint must leave free on its volume (the server's records may share it).
    reserve_bytes: int = Field(0, ge=0)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @property
    def events_path(self) -> Path:
        return self.output_dir / "events.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @property
    def merged_dir(self) -> Path:
        return self.output_dir / "model-merged"

    @property
    def tensorboard_dir(self) -> Path:
        return self.output_dir / "tensorboard"

    @property
    def packing(self) -> bool:
        if self.train_mode == "dpo":
            return False
        return True if self.hyperparameters.packing is None else self.hyperparameters.packing


def load_spec(path: Path) -> RunSpec:
    return RunSpec.model_validate_json(Path(path).read_text(encoding="utf-8"))


@dataclass
class StopFlag:
    """Set from the SIGTERM handler; the training loop checks it between optimizer steps."""

    requested: bool = False
