"""Runtime settings, read from the environment once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunehouse.executors.gpus import gpus_from_env


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    max_running: int
    public_url: str
    # Each running trainer gets one of these; empty means no pinning (a CPU machine, or opted out).
    gpus: tuple[str, ...] = ()
    # Without GPUs to lend: the most CPU processes (gloo ranks) one run may train on, one per GPU it asks for.
    cpu_ranks: int = 1
    # A trainer that vanishes (killed, node lost) is resumed from its last checkpoint; the run fails when
    # it has been lost this many times.
    max_trainer_losses: int = 3
    # Kept free on the home volume for the records: creates and uploads are refused (507) and trainers
    # stop checkpointing (the run fails with the reason) rather than eat into it.
    min_free_bytes: int = 64 << 20

    @property
    def capacity(self) -> int:
        """How many trainers this node runs at once: never more than it has GPUs to give them."""
        return min(self.max_running, len(self.gpus)) if self.gpus else self.max_running

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"


def load_settings() -> Settings:
    home = Path(os.environ.get("TUNEHOUSE_HOME", "~/.tunehouse")).expanduser().resolve()
    url = os.environ.get("TUNEHOUSE_DATABASE_URL") or f"sqlite:///{home / 'tunehouse.db'}"
    gpus = gpus_from_env(os.environ)
    # With GPUs the natural limit is one trainer per GPU; on a CPU two at a time keeps the machine usable.
    default_running = len(gpus) if gpus else 2
    return Settings(
        home=home,
        database_url=url,
        max_running=int(os.environ.get("TUNEHOUSE_MAX_RUNNING", default_running)),
        public_url=os.environ.get("TUNEHOUSE_PUBLIC_URL", ""),
        gpus=gpus,
        cpu_ranks=max(1, int(os.environ.get("TUNEHOUSE_CPU_RANKS", 1))),
        max_trainer_losses=int(os.environ.get("TUNEHOUSE_MAX_TRAINER_LOSSES", 3)),
        min_free_bytes=int(float(os.environ.get("TUNEHOUSE_MIN_FREE_MB", 64)) * (1 << 20)),
    )
