"""A write that fills the disk leaves nothing half-written behind and says so plainly."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunehouse.trainer.diskspace import OutOfSpace, ensure_room, written_whole


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    vol = tmp_path / "vol"
    vol.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(vol)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield vol
    subprocess.run(["umount", "-l", str(vol)], check=False)


def test_a_write_that_fills_the_disk_removes_its_partial_files_and_names_the_final_path(
    tiny_volume: Path,
) -> None:
    earlier = tiny_volume / "step-1"
    earlier.mkdir()
    (earlier / "weights").write_bytes(b"w" * 1000)
    tmp, final = tiny_volume / "step-2.tmp", tiny_volume / "step-2"
    with pytest.raises(OutOfSpace) as full, written_whole(tmp, final):
        tmp.mkdir()
        (tmp / "weights").write_bytes(b"w" * (2 << 20))
    assert str(full.value) == f"no space left on device while writing {final}"
    assert sorted(p.name for p in tiny_volume.iterdir()) == ["step-1"]
    assert (earlier / "weights").read_bytes() == b"w" * 1000


def test_a_write_is_refused_up_front_when_it_would_eat_into_the_reserve(tiny_volume: Path) -> None:
    with pytest.raises(OutOfSpace) as refused:
        ensure_room(tiny_volume / "step-3", needed=600 << 10, reserve=600 << 10)
    assert "no space left on device while writing" in str(refused.value)
    assert "must stay free" in str(refused.value)
    ensure_room(tiny_volume / "step-3", needed=100 << 10, reserve=100 << 10)  # fits: no error
