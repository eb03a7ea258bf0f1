"""Runtime settings, read from the environment once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunehouse import storage
from tunehouse.executors.gpus import gpus_from_env
from tunehouse.executors.ray import PLACEMENT_RETRIES, PLACEMENT_TIMEOUT_S

EXECUTORS = ("local", "ray")
RAY_PLACEMENTS = ("pack", "spread")


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
    # Where trainers run: "local" (subprocesses of this node) or "ray" (jobs on the cluster at ray_address).
    executor: str = "local"
    ray_address: str = ""
    # The interpreter a Ray job runs the trainer with; empty: this server's own.
    ray_python: str = ""
    # How Ray places the workers of a multi-worker run: "pack" (as few nodes as fit them) or "spread" (each
    # worker on a node of its own, STRICT_SPREAD), from TUNEHOUSE_RAY_PLACEMENT.
    ray_placement: str = "pack"
    # How long the Ray Train driver waits for the cluster to place all workers of a multi-worker run
    # (TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S), and how many more times it asks (TUNEHOUSE_RAY_PLACEMENT_RETRIES)
    # before the run fails with what could not be placed: Ray Train alone would ask for ever.
    ray_placement_timeout_s: float = PLACEMENT_TIMEOUT_S
    ray_placement_retries: int = PLACEMENT_RETRIES
    # Where artifacts live (TUNEHOUSE_STORAGE_URL): "" = the home directory, else s3://bucket/prefix.
    storage_url: str = ""

    @property
    def storage_root(self) -> str:
        """The root every artifact lives under: the home's path, or the s3:// URL."""
        return storage.normalize_root(self.storage_url) if self.storage_url else str(self.home)

    @property
    def storage_remote(self) -> bool:
        return storage.is_url(self.storage_root)

    @property
    def runs_root(self) -> str:
        return storage.join(self.storage_root, "runs")

    @property
    def cache_dir(self) -> Path:
        """Node-local and disposable: base models fetched from the store, trainers' scratch folders."""
        return self.home / "cache"

    @property
    def scratch_dir(self) -> Path:
        """Where trainers work when the runs live in an object store; synced to the store as they go."""
        return self.cache_dir / "scratch"

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def capacity(self) -> int:
        """How many trainers this node runs at once: never more than it has GPUs to give them."""
        return min(self.max_running, len(self.gpus)) if self.gpus else self.max_running

    @property
    def runs_dir(self) -> Path:
        """The runs' folder when the storage is local (see runs_root for any storage)."""
        return Path(self.storage_root) / "runs"

    @property
    def files_dir(self) -> Path | str:
        """Uploaded files: a folder of the home, or its s3:// location when the storage is remote."""
        if self.storage_remote:
            return storage.join(self.storage_root, "files")
        return Path(self.storage_root) / "files"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"


def load_settings() -> Settings:
    home = Path(os.environ.get("TUNEHOUSE_HOME", "~/.tunehouse")).expanduser().resolve()
    url = os.environ.get("TUNEHOUSE_DATABASE_URL") or f"sqlite:///{home / 'tunehouse.db'}"
    executor = os.environ.get("TUNEHOUSE_EXECUTOR", "local").strip().lower() or "local"
    if executor not in EXECUTORS:
        raise ValueError(f"TUNEHOUSE_EXECUTOR={executor!r}: expected one of {', '.join(EXECUTORS)}")
    # On Ray the cluster places GPUs; this machine's own are not lent to anyone.
    gpus = gpus_from_env(os.environ) if executor == "local" else ()
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
        storage_url=_storage_url(),
        executor=executor,
        ray_address=os.environ.get("TUNEHOUSE_RAY_ADDRESS", ""),
        ray_python=os.environ.get("TUNEHOUSE_RAY_PYTHON", ""),
        ray_placement=_ray_placement(),
        ray_placement_timeout_s=_positive("TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S", PLACEMENT_TIMEOUT_S),
        ray_placement_retries=max(
            0, int(os.environ.get("TUNEHOUSE_RAY_PLACEMENT_RETRIES", PLACEMENT_RETRIES))
        ),
    )


def _positive(name: str, default: float) -> float:
    value = float(os.environ.get(name) or default)
    if value <= 0:
        raise ValueError(f"{name}={value:g}: expected a number of seconds above 0")
    return value


def _ray_placement() -> str:
    value = os.environ.get("TUNEHOUSE_RAY_PLACEMENT", "pack").strip().lower() or "pack"
    if value not in RAY_PLACEMENTS:
        raise ValueError(f"TUNEHOUSE_RAY_PLACEMENT={value!r}: expected one of {', '.join(RAY_PLACEMENTS)}")
    return value


def _storage_url() -> str:
    """TUNEHOUSE_STORAGE_URL, checked now so that a typo stops the server at start, not a run later."""
    url = os.environ.get(storage.STORAGE_URL_ENV, "").strip()
    if not url or not storage.is_url(url):
        return str(Path(url).expanduser().resolve()) if url else ""
    return storage.normalize_root(url)
