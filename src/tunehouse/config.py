"""Runtime settings, read from the environment once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    max_running: int
    public_url: str

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
    return Settings(
        home=home,
        database_url=url,
        max_running=int(os.environ.get("TUNEHOUSE_MAX_RUNNING", "2")),
        public_url=os.environ.get("TUNEHOUSE_PUBLIC_URL", ""),
    )
