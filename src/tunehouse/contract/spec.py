"""The run spec the scheduler writes for the trainer, and the exit codes it reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunehouse.contract.hyperparameters import Hyperparameters

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_DATA_INVALID = 2
EXIT_STOPPED = 3
EXIT_NO_SPACE = 4  # the disk filled up; said in an error event too when there was room to say it

Method = Literal["lora", "full"]
TrainMode = Literal["sft", "pretrain", "dpo"]
InitKind = Literal["lora_adapter", "full"]


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
        return self.hyperparameters.packing


def load_spec(path: Path) -> RunSpec:
    return RunSpec.model_validate_json(Path(path).read_text(encoding="utf-8"))
