"""The benchmark scripts: the GPU check parses and answers for itself, and the throughput bench feeds
our trainer exactly the token ids it gives the peers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"


def bench_module() -> ModuleType:
    path = ROOT / "bench" / "trainer_throughput.py"
    spec = importlib.util.spec_from_file_location("trainer_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)


def test_gpu_check_explains_itself_and_refuses_unknown_options() -> None:
    shown = subprocess.run(["bash", str(GPU_CHECK), "--help"], capture_output=True, text=True, check=True)
    assert "--cpu-smoke" in shown.stdout and "WHEEL_DIR" in shown.stdout
    refused = subprocess.run(["bash", str(GPU_CHECK), "--fast"], capture_output=True, text=True)
    assert refused.returncode == 2 and "unknown option --fast" in refused.stderr


def test_gpu_check_refuses_a_wheel_directory_that_does_not_exist(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(GPU_CHECK), str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)},
    )
    assert run.returncode == 2 and "does not exist" in run.stderr


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_our_bench_run_reads_the_peers_ids_back_from_text(tmp_path: Path, family: str) -> None:
    from transformers import AutoTokenizer

    from tunehouse.trainer.tokenization import encode_text

    bench = bench_module()
    config = bench.make_config(300, 32, 1, family=family)
    # Saved beside the model, as our run reads it: transformers then loads a Qwen2 model's tokenizer
    # with its own Qwen2 class.
    bench.write_bench_model(config, 0, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for ids in bench.make_sequences([17, 40, 300], config.vocab_size, seed=0):
        assert ids[-1] == tokenizer.eos_token_id  # so our text path appends nothing
        text = "".join(map(bench.as_word, ids))
        assert encode_text(tokenizer, text) == (ids, ids)


def test_chat_samples_learn_the_replies_alone_as_the_peers_mask_them() -> None:
    bench = bench_module()
    samples = bench.chat_samples([30, 64, 200], 300, seed=0, prompt_share=0.5)
    tokenizer = bench.bench_tokenizer(300)
    for sample, n in zip(samples, [30, 64, 200], strict=True):
        assert len(sample.ids) == n
        reply = sample.ids.index(bench.ASSISTANT_ID) + 1
        # Prompt and assistant header masked; the reply and its EOS learned.
        assert sample.labels[:reply] == [-100] * reply
        assert sample.labels[reply:] == sample.ids[reply:] and sample.ids[-1] == tokenizer.eos_token_id
        # What TRL's assistant_only_loss reads: the template's assistant mask over the same ids.
        out = tokenizer.apply_chat_template(
            sample.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert list(out["input_ids"]) == sample.ids
        assert [
            t if m else -100 for t, m in zip(sample.ids, out["assistant_masks"], strict=True)
        ] == sample.labels
    assert 0.2 < bench.labelled_share(samples) < 0.8
