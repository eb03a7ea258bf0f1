"""A multi-rank run whose ranks have disks of their own (Ray Train workers on different nodes) keeps whole
checkpoints in the artifact store: every rank uploads its own shards and RNG state before rank 0 publishes
the rest (the state file last), a rank keeps no scratch copy of a checkpoint, and a resume on fresh empty
disks, fetching from the store, continues exactly.

Each rank runs in a mount namespace of its own with a private tmpfs over the run's scratch folder, so the
two ranks of one machine see two different disks at the same path (tests run as root; where mounting is
not permitted the tests skip). The model and data are read from the host's disk, as a node's cache would
be; only the scratch folder is per rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import BUCKET, SeaweedS3
from tests.unit.trainer.test_trainer_distributed import DEADLINE_S, curve, launch, write_spec
from tunehouse import storage
from tunehouse.executors.local import free_port
from tunehouse.trainer.checkpoint import STATE_FILE
from tunehouse.trainer.distributed import DISK_MARK

pytestmark = pytest.mark.s3

# Each rank: its own tmpfs over the scratch folder, then the trainer; what is left on that disk at the end
# is listed into a file on the host's disk (the tmpfs goes with the namespace).
RANK_SCRIPT = (
    'mount -t tmpfs -o size=512m tmpfs "$1" || exit 97\n'
    '"$2" -m tunehouse.trainer "$3"\n'
    "rc=$?\n"
    'cd "$1" && find . -mindepth 1 | sort > "$4"\n'
    "exit $rc\n"
)


def can_mount(where: Path) -> str | None:
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else (probe.stderr.strip() or f"exit {probe.returncode}")


def run_on_own_disks(spec: Path, scratch: Path, s3: SeaweedS3, ranks: int = 2) -> list[list[str]]:
    """Run the spec's two ranks, each on a fresh disk of its own mounted at ``scratch``; returns what
    each rank's disk held at the end (paths under ``scratch``)."""
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(ranks):
        env = {
            **os.environ,
            **s3.env,
            "RANK": str(rank),
            "WORLD_SIZE": str(ranks),
            "LOCAL_RANK": "0",  # one rank per "node"
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        report = spec.parent / f"rank-{rank}-disk.txt"
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", RANK_SCRIPT, "sh"]
        command += [str(scratch), sys.executable, str(spec), str(report)]
        procs.append(
            (
                report,
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    left = []
    for rank, (report, proc) in enumerate(procs):
        _, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, f"rank {rank}: {err[-3000:]}"
        left.append(report.read_text(encoding="utf-8").split())
    return left


def stored_events(run_url: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_bytes(f"{run_url}/events.jsonl").decode().splitlines()]


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == type_]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own-disks")
    refused = can_mount(root / "probe")
    if refused is not None:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {refused}")
    return root


@pytest.fixture(scope="module")
def store_root(s3_server: SeaweedS3) -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def saved(root: Path, tiny_model: Path, store_root: str, s3_server: SeaweedS3) -> dict[str, Any]:
    """A two-rank FSDP2 run (6 steps, a checkpoint every 3) with its folder in the store, each rank on a
    disk of its own."""
    run_url = f"{store_root}/runs/saved"
    scratch = root / "scratch-saved"
    spec = write_spec(
        root,
        tiny_model,
        "saved",
        "full",
        hp={"save_steps": 3},
        output_dir=str(scratch / "out"),
        storage_dir=run_url,
    )
    left = run_on_own_disks(spec, scratch, s3_server)
    return {"url": run_url, "left": left}


def test_every_ranks_shards_and_rng_state_reach_the_store_with_the_checkpoint(
    saved: dict[str, Any], s3_env: SeaweedS3
) -> None:
    events = stored_events(saved["url"])
    reported = [c["path"] for c in of_type(events, "checkpoint")]
    assert f"{saved['url']}/checkpoints/step-3" in reported
    for url in reported:
        for name in ("dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng-0.pt", "rng-1.pt"):
            assert storage.isfile(f"{url}/{name}"), f"{name} missing from {url}"
        assert storage.isfile(f"{url}/{STATE_FILE}")
        assert not storage.exists(f"{url}/{DISK_MARK}")


def test_a_rank_on_a_disk_of_its_own_keeps_no_scratch_copy_of_a_checkpoint(saved: dict[str, Any]) -> None:
    rank0, rank1 = saved["left"]
    assert "./out/checkpoints/step-3" in rank0  # rank 0's scratch is the run's folder, as on one node
    assert not [p for p in rank1 if p.startswith("./out/checkpoints/")]


def test_a_resume_on_fresh_disks_from_the_store_continues_exactly(
    root: Path, tiny_model: Path, store_root: str, saved: dict[str, Any], s3_env: SeaweedS3
) -> None:
    scratch = root / "scratch-resumed"
    local = scratch / "inputs" / "step-3"  # where each rank fetches the checkpoint to, on its own disk
    run_url = f"{store_root}/runs/resumed"
    spec = write_spec(
        root,
        tiny_model,
        "resumed",
        "full",
        output_dir=str(scratch / "out"),
        storage_dir=run_url,
        resume_from=str(local),
        fetch=[{"url": f"{saved['url']}/checkpoints/step-3", "dest": str(local), "kind": "dir"}],
    )
    run_on_own_disks(spec, scratch, s3_env)
    after = [c for c in curve(stored_events(saved["url"])) if c[0] > 3]
    resumed = curve(stored_events(run_url))
    assert [c[0] for c in resumed] == [c[0] for c in after] == [4, 5, 6]
    flat = [v for c in resumed for v in c[1:]]
    assert flat == pytest.approx([v for c in after for v in c[1:]], rel=1e-6)


def test_ranks_sharing_a_disk_leave_the_same_whole_checkpoints_in_the_store(
    tmp_path: Path, tiny_model: Path, s3_root: str
) -> None:
    run_url = f"{s3_root}/runs/shared"
    spec = write_spec(tmp_path, tiny_model, "shared", "full", hp={"save_steps": 3}, storage_dir=run_url)
    proc = launch(spec)  # torchrun: both ranks on one node, one disk
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err[-3000:]
    url = f"{run_url}/checkpoints/step-3"
    for name in ("dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng-0.pt", "rng-1.pt", STATE_FILE):
        assert storage.isfile(f"{url}/{name}"), f"{name} missing from {url}"
    assert not storage.exists(f"{url}/{DISK_MARK}")
