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

# Written into the run directory to ask the trainer to checkpoint and exit, as SIGTERM does: the way to reach
# a trainer whose engine gives a signal too little time (Ray's job stop kills after 3 s).
STOP_REQUEST_FILE = "stop.request"
MAX_GPUS = 64  # GPUs one run may ask for

Method = Literal["lora", "full"]
TrainMode = Literal["sft", "pretrain", "dpo"]
InitKind = Literal["lora_adapter", "full"]


class InitFrom(BaseModel):
    """Starting weights for incremental training; unlike resume_from the optimizer starts fresh."""

    model_config = ConfigDict(extra="ignore")

    path: Path
    kind: InitKind


class Fetch(BaseModel):
    """An input the trainer copies from the artifact store before it starts: ``dest`` is where the spec's
    local fields (model_path, train_files, resume_from, init_from) expect it."""

    model_config = ConfigDict(extra="ignore")

    url: str
    dest: Path
    kind: Literal["file", "dir"]
    # Immutable content kept between runs on this node (a base model): fetched once, then reused.
    cached: bool = False


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
    # GPUs (ranks) the run trains on: more than one launches the trainer under torchrun, one process per
    # GPU (on a node that lends none, CPU processes over gloo: TUNEHOUSE_CPU_RANKS).
    gpus: int = Field(1, ge=1, le=MAX_GPUS)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    # The run's folder in the artifact store (s3://…/runs/<key>) when output_dir is a local scratch folder:
    # the trainer syncs events, checkpoints and outputs there, and reports a checkpoint only once stored.
    storage_dir: str | None = None
    fetch: list[Fetch] = Field(default_factory=list)
    # Tokenization cache in the store, shared by every node; cache_dir is then this node's copy of it.
    token_cache_url: str | None = None

    @property
    def events_path(self) -> Path:
        return self.output_dir / "events.jsonl"

    @property
    def stop_request_path(self) -> Path:
        return self.output_dir / STOP_REQUEST_FILE

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
