"""Which GPUs a node lends to trainers, and how many trainers it runs at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunehouse.config import load_settings
from tunehouse.executors.gpus import detect_gpus, free_gpus, gpus_from_env, parse_gpus


def test_a_gpu_list_is_comma_separated_ids() -> None:
    assert parse_gpus("0,1, 3") == ("0", "1", "3")
    assert parse_gpus("GPU-5f2c,GPU-77ab") == ("GPU-5f2c", "GPU-77ab")


def test_none_or_empty_means_no_pinning() -> None:
    assert parse_gpus("none") == parse_gpus("") == parse_gpus("  ") == ()


@pytest.mark.parametrize(("text", "says"), [("0,,1", "separated by commas"), ("0,1,0", "twice")])
def test_a_malformed_list_is_refused_naming_the_setting(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as err:
        parse_gpus(text)
    assert "TUNEHOUSE_GPUS" in str(err.value)


def test_free_gpus_are_those_no_run_holds_in_configured_order() -> None:
    assert free_gpus(("0", "1", "2", "3"), ["2", None, "0"]) == ["1", "3"]
    assert free_gpus(("0",), ["0"]) == []


def test_detection_honours_the_servers_own_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus() == ("2", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus() == ()


def test_detection_lists_what_nvidia_smi_reports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index" ] && printf "0\\n1\\n"\n')
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ("0", "1")


def test_a_machine_without_nvidia_smi_has_no_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == ()


def test_the_setting_wins_over_detection_and_auto_detects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert gpus_from_env({"TUNEHOUSE_GPUS": "1,2"}) == ("1", "2")
    assert gpus_from_env({"TUNEHOUSE_GPUS": "auto"}) == gpus_from_env({}) == ("5",)


def test_with_gpus_a_node_runs_one_trainer_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_GPUS", "0,1,2")
    monkeypatch.delenv("TUNEHOUSE_MAX_RUNNING", raising=False)
    settings = load_settings()
    assert settings.gpus == ("0", "1", "2") and settings.capacity == 3
    monkeypatch.setenv("TUNEHOUSE_MAX_RUNNING", "8")
    assert load_settings().capacity == 3  # never more trainers than GPUs to give them
    monkeypatch.setenv("TUNEHOUSE_MAX_RUNNING", "1")
    assert load_settings().capacity == 1


def test_without_gpus_a_node_runs_two_trainers_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_GPUS", "none")
    monkeypatch.delenv("TUNEHOUSE_MAX_RUNNING", raising=False)
    assert load_settings().capacity == 2
    monkeypatch.setenv("TUNEHOUSE_MAX_RUNNING", "5")
    assert load_settings().capacity == 5


def test_a_run_holding_several_gpus_holds_each_of_them() -> None:
    assert free_gpus(("0", "1", "2", "3"), ["0,2", None]) == ["1", "3"]
