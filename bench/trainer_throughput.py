#!/usr/bin/env python3
"""Training throughput: our loop against the Hugging Face configurations a careful user would pick.

Two scenarios (``--scenario``, both by default), each with the same runs:

- ``chat``: SFT on one-turn conversations, the loss on the assistant replies only (as in every real
  chat SFT run): the prompt takes a share of each conversation drawn around ``--prompt-share``. The
  bench tokenizer's chat template marks the replies with ``{% generation %}``; our trainer reads the
  conversations from a data file and tokenizes them (SFT mode), the HF runs get the ids and labels
  (prompts -100) our tokenization gives, and TRL tokenizes the same conversations itself with
  ``assistant_only_loss`` (the bench asserts it gets the same ids and labels).
- ``text``: documents with every token learned (continued pre-training), as ids.

The runs, in this process, one after the other, on the same device, the same random Qwen2-shaped
model (same init) and the same examples in the same order per optimizer step (so the same tokens per
step and, up to kernel rounding, the same losses, which the bench checks step by step):

- ``tunehouse``: our trainer's entry point (``run_training``, what a real run starts: it loads the
  saved model and tokenizer, reads and tokenizes a data file, writes its events, a final checkpoint
  and the model), full fine-tuning, packed.
- ``hf_padded``: transformers.Trainer, each batch padded to its longest example (dynamic padding),
  AdamW (``adamw_torch``). What /work/shared/bench/peer_hf_trainer.py measures.
- ``hf_padding_free``: transformers.Trainer with ``DataCollatorWithFlattening`` (the step's examples
  in one row with position ids, no padding) and fused AdamW (``adamw_torch_fused``).
- ``trl_sft_packed``: TRL ``SFTTrainer`` with ``packing=True`` and ``padding_free=True`` (its
  best-fit-decreasing packing, its fused chunked LM head), fused AdamW. It prepares the data its own
  way and packs with ``trl.pack_dataset`` itself, but over one optimizer step's examples at a time,
  into one row as long as the longest step, so its steps hold the same examples as the others'.

All runs: constant learning rate 1e-5, weight decay 0.01 (off for 1-D tensors), gradient clipping at
1.0, bf16 autocast on CUDA (fp32 weights), sequential order. Lengths are log-normal like chat SFT
data (median --median-len, long tail clipped to --max-len). Only real (non-pad) tokens count as
throughput; the clock starts after --warmup steps and is read after a device synchronize. Memory:
peak RSS sampled during the run on CPU (which includes whatever earlier runs left in the allocator),
``max_memory_allocated`` on CUDA. MFU counts model FLOPs (6 per parameter per token, LM head included,
plus causal attention per example), not padding.

Prints one JSON line, then a table per scenario. CPU example (a few minutes on 2 idle cores; on a
busy machine add --rounds 2, and --threads 1, since OpenMP threads that wait for a core spin and
bill CPU time):

  PYTHONPATH=src .venv/bin/python bench/trainer_throughput.py --steps 6 --warmup 2 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

LR = 1e-5
WEIGHT_DECAY = 0.01
LORA_RANK, LORA_ALPHA = 16, 32
MAX_GRAD_NORM = 1.0
CUDA = torch.cuda.is_available()
# Dense bf16 peak FLOP/s by device name substring, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def make_config(vocab: int, hidden: int, layers: int, shape: str = "custom", family: str = "qwen2"):
    """The bench's model config: a small Qwen2 (or Llama) shape from the sizes given, or a named real
    shape (weights random all the same; nothing is downloaded)."""
    from transformers import LlamaConfig, Qwen2Config

    if shape == "qwen2.5-0.5b":
        return Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_cache=False,
        )
    if shape == "llama3-8b":
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            use_cache=False,
        )
    return (LlamaConfig if family == "llama" else Qwen2Config)(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        tie_word_embeddings=family != "llama",
        use_cache=False,
    )


def lora_config():
    """The adapter every LoRA run trains: our spec's defaults spelled out for PEFT (no dropout, so the
    runs stay comparable step for step)."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def make_lengths(n: int, median: int, max_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [max(16, min(max_len, int(rng.lognormvariate(math.log(median), 0.8)))) for _ in range(n)]


def make_sequences(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Each ends with the EOS id (0), as a tokenized document does, so our text path adds none.
    return [torch.randint(1, vocab, (n - 1,), generator=g).tolist() + [0] for n in lengths]


# The bench tokenizer's chat template: "<1>" opens a user turn, "<2>" an assistant turn, the EOS "<0>"
# ends either. The {% generation %} markers give the assistant mask that our tokenization and TRL's
# assistant_only_loss both read, so every trainer learns exactly the replies and their EOS.
USER_ID, ASSISTANT_ID, FIRST_CONTENT_ID = 1, 2, 3
CHAT_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{{- '<2>' }}"
    "{% generation %}{{- m['content'] + '<0>' }}{% endgeneration %}"
    "{%- else %}{{- '<1>' + m['content'] + '<0>' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<2>' }}{%- endif %}"
)


@dataclass(frozen=True)
class Sample:
    """One training example as every run gets it: token ids, labels (-100: no loss) and, for chat,
    the conversation they were tokenized from."""

    ids: list[int]
    labels: list[int]
    messages: list[dict[str, str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def text_samples(lengths: list[int], vocab: int, seed: int) -> list[Sample]:
    """Documents whose every token is learned (continued pre-training)."""
    return [Sample(s, list(s)) for s in make_sequences(lengths, vocab, seed)]


def chat_samples(lengths: list[int], vocab: int, seed: int, prompt_share: float) -> list[Sample]:
    """One-turn conversations of these total lengths: a user prompt taking a share of each drawn
    uniformly around ``prompt_share`` (+-0.25), then the assistant reply. Tokenized by our trainer's
    own chat tokenization (the labels: the reply and its EOS only)."""
    from tunehouse.contract.datasets import Turn
    from tunehouse.trainer.tokenization import encode_chat, prepare_tokenizer

    tokenizer = bench_tokenizer(vocab)
    prepare_tokenizer(tokenizer, None)
    rng = random.Random(seed + 1)
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        content = n - 4  # "<1>" prompt "<0>" "<2>" reply "<0>"
        share = min(0.95, max(0.05, prompt_share + rng.uniform(-0.25, 0.25)))
        prompt = max(1, min(content - 1, round(content * share)))
        words = torch.randint(FIRST_CONTENT_ID, vocab, (content,), generator=g).tolist()
        messages = [
            {"role": "user", "content": "".join(map(as_word, words[:prompt]))},
            {"role": "assistant", "content": "".join(map(as_word, words[prompt:]))},
        ]
        ids, labels = encode_chat(tokenizer, tuple(Turn(m["role"], m["content"]) for m in messages))
        assert len(ids) == n, (len(ids), n)
        out.append(Sample(ids, labels, messages))
    return out


def labelled_share(samples: list[Sample]) -> float:
    """The share of the next-token targets that carry a loss."""
    targets = sum(len(s) - 1 for s in samples)
    return sum(1 for s in samples for label in s.labels[1:] if label != -100) / targets


def fresh_model(config, seed: int, lora: bool = False, device: str | None = None):
    """The peers' model: fp32 weights (bf16 autocast on CUDA, as HF Trainer's bf16=True), initialised on
    the device it trains on (an 8B model's init on the host would take minutes)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device or ("cuda" if CUDA else "cpu")):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    return model


def count_params(config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def model_flops(config, params: int, steps: list[list[Sample]], lora: bool = False) -> float:
    """Useful training FLOPs of these steps: 6 per weight per token (4 under LoRA: the frozen weights
    get no gradient), the LM head counted as a matmul, the embedding lookup not; plus causal attention
    (QK^T and PV, forward and backward)."""
    matmul_params = params - config.vocab_size * config.hidden_size * (0 if config.tie_word_embeddings else 1)
    per_weight = 4 if lora else 6
    total = 0.0
    for step in steps:
        for seq in step:
            n = len(seq)
            total += (
                per_weight * matmul_params * n + 6 * config.num_hidden_layers * config.hidden_size * n * n
            )
    return total


class Meter:
    """Wall and process CPU time between two marks (after a device sync), and peak memory of the run."""

    def __init__(self) -> None:
        self.started = self.cpu_started = self.secs = self.cpu = 0.0
        self.rss_start = psutil.Process().memory_info().rss
        self.rss_peak = self.rss_start
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        if CUDA:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.02):
            self.rss_peak = max(self.rss_peak, proc.memory_info().rss)

    def start(self) -> None:
        if CUDA:
            torch.cuda.synchronize()
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        if CUDA:
            torch.cuda.synchronize()
        self.secs = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu_started

    def close(self) -> dict[str, float]:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if CUDA:
            return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}
        return {"peak_mem_mb": self.rss_peak / 2**20, "rss_start_mb": self.rss_start / 2**20}


def hf_args(out: str, batch: int, steps: int, optim: str, **extra: Any) -> dict[str, Any]:
    return dict(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        optim=optim,
        logging_steps=1,  # per-step losses, to compare; our step reads its loss every step too
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the steps hold the same examples as the other runs'
        use_cpu=not CUDA,
        bf16=CUDA,
        disable_tqdm=True,
        seed=0,
        **extra,
    )


def clock_callback(meter: Meter, warmup: int, steps: int, losses: list[float]):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step == warmup:
                meter.start()
            elif state.global_step == steps:
                meter.stop()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Clock()


def run_hf(kind: str, config, steps: list[list[Sample]], args) -> dict:
    from torch.utils.data import Dataset
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    seqs = [s for step in steps for s in step]

    class Rows(Dataset):
        def __len__(self) -> int:
            return len(seqs)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": seqs[i].ids, "labels": seqs[i].labels}

    def pad_collate(batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.zeros(len(batch), n, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        att = torch.zeros(len(batch), n, dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k] = torch.tensor(b["input_ids"])
            lab[r, :k] = torch.tensor(b["labels"])
            att[r, :k] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    if kind == "hf_padded":
        collator, optim = pad_collate, "adamw_torch"
    else:
        collator, optim = DataCollatorWithFlattening(return_position_ids=True), "adamw_torch_fused"
    meter, losses = Meter(), []
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(**hf_args(out, args.batch, len(steps), optim, remove_unused_columns=False))
        trainer = Trainer(
            model=fresh_model(config, args.seed, lora=args.method == "lora"),
            args=targs,
            train_dataset=Rows(),
            data_collator=collator,
            callbacks=[clock_callback(meter, args.warmup, len(steps), losses)],
        )
        trainer.train()
    del trainer
    return finish(meter, losses)


def bench_tokenizer(vocab: int):
    """A tokenizer whose every token is an added token "<id>" ("<17><4><0>" -> [17, 4, 0]): SFTTrainer
    wants one for its pad id and never tokenizes the peers' ids; our run reads its data as text through
    it. Added tokens are matched before any pre-tokenization, so they survive transformers loading a
    Qwen2 model's tokenizer as its own Qwen2Tokenizer class (byte-level BPE)."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [as_word(i) for i in range(vocab)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in words])
    zero = words[0]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=zero, eos_token=zero, unk_token=zero)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def as_word(token_id: int) -> str:
    return f"<{token_id}>"


def run_trl(config, steps: list[list[Sample]], args) -> dict:
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer, pack_dataset

    hf_logging.set_verbosity_error()
    seqs = [s for step in steps for s in step]
    chat = seqs[0].messages is not None
    longest_step = max(sum(len(s) for s in step) for step in steps)
    # TRL tokenizes the conversations itself (assistant_only_loss reads the template's generation
    # markers); documents come as ids, every token learned.
    columns = {"messages": [s.messages for s in seqs]} if chat else {"input_ids": [s.ids for s in seqs]}
    rows = Dataset.from_dict(columns)

    class StepPacked(SFTTrainer):
        """SFTTrainer preparing the data its own way (tokenization, labels), then packing with its own
        ``pack_dataset`` over one optimizer step's examples at a time, into one row as long as the
        longest step: best-fit decreasing then puts each step's examples, and only those, in one row,
        so its steps hold the same examples as the other runs'."""

        def _prepare_dataset(self, dataset, processing_class, args_, packing, formatting, name):
            prepared = super()._prepare_dataset(dataset, processing_class, args_, False, formatting, name)
            got = [(list(r["input_ids"]), list(r["labels"])) for r in prepared]
            assert got == [(s.ids, s.labels) for s in seqs], "TRL must tokenize and label as the others do"
            packed = pack_dataset(
                prepared.select_columns(["input_ids", "labels"]),
                longest_step,
                "bfd",
                {"batch_size": args.batch},
            )
            assert len(packed) == len(steps), "each step's examples must pack into exactly one row"
            return packed

    meter, losses = Meter(), []
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            **hf_args(
                out,
                1,
                len(steps),
                "adamw_torch_fused",
                packing=True,
                padding_free=True,
                assistant_only_loss=chat,
                max_length=longest_step,
                gradient_checkpointing=False,  # SFTConfig turns it on by default; the other runs have none
            )
        )
        trainer = StepPacked(
            model=fresh_model(config, args.seed, lora=args.method == "lora"),
            args=cfg,
            train_dataset=rows,
            processing_class=bench_tokenizer(config.vocab_size),
            callbacks=[clock_callback(meter, args.warmup, len(steps), losses)],
        )
        trainer.train()
    del trainer
    return finish(meter, losses)


SETUP_LINES = ("model: ", "optimizer: ", "compile: ", "memory plan: ", "steps: ")


def clock_events(path: Path, meter: Meter, warmup: int, steps: int, losses: list[float], setup: list[str]):
    """Our run's event writer (the real one, writing its file): it starts the clock at the warm-up
    step's progress event, stops it at the last step's, and collects the per-step losses and the
    log lines that say how the run was set up (attention, optimizer, compile, loss path)."""
    from tunehouse.trainer.events import EventWriter

    class Clocked(EventWriter):
        def emit(self, type_, payload):
            event = super().emit(type_, payload)
            if type_ == "progress":
                if payload["step"] == warmup:
                    meter.start()
                elif payload["step"] == steps:
                    meter.stop()
            elif type_ == "metrics" and "train_loss" in payload:
                losses.append(float(payload["train_loss"]))
            elif type_ == "log" and payload["message"].startswith(SETUP_LINES):
                setup.append(payload["message"])
            return event

    return Clocked(path, stream=None)


def write_bench_model(config, seed: int, dest: Path) -> None:
    """The bench's model (same init as the peers') and its tokenizer, saved the way a real base is."""
    model = fresh_model(config, seed)
    if CUDA:  # our run loads bf16 weights on CUDA (precision.py): the same rounding, half the bytes
        model.to(torch.bfloat16)
    model.save_pretrained(dest)
    del model
    if CUDA:
        torch.cuda.empty_cache()
    bench_tokenizer(config.vocab_size).save_pretrained(dest)


def run_ours(config, steps: list[list[Sample]], args) -> dict:
    """Our trainer's entry point, the same one a real run starts (its events, its final checkpoint and
    model), on an SFT file of the conversations (chat) or a pretrain text file of the ids (text: the
    word-level tokenizer maps each back to itself, and every sequence already ends with the EOS id),
    so the examples are the peers' token for token. The file's rows are laid out so that the run's
    seeded shuffle yields the bench's steps in order."""
    from tunehouse.contract.spec import RunSpec
    from tunehouse.trainer.loop import epoch_order, run_training
    from tunehouse.trainer.stop import StopFlag

    seqs = [s for step in steps for s in step]
    chat = seqs[0].messages is not None
    order = epoch_order(len(seqs), args.seed, 0)
    rows: list[Sample] = list(seqs)
    for position, row in enumerate(order):
        rows[row] = seqs[position]
    losses: list[float] = []
    setup: list[str] = []
    # tmpfs where there is one: an 8B model is written and read back once.
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        root = Path(tmp)
        write_bench_model(config, args.seed, root / "model")
        meter = Meter()  # after the write: its peak memory is the run's own
        data = root / "train.jsonl"
        # Chat: the conversations (our trainer tokenizes them as chat_samples did); text: the ids as words.
        lines = ({"messages": r.messages} if chat else {"text": "".join(map(as_word, r.ids))} for r in rows)
        data.write_text("".join(json.dumps(line) + "\n" for line in lines))
        spec = RunSpec(
            run_id="bench",
            model_path=root / "model",
            method=args.method,
            train_mode="sft" if chat else "pretrain",
            train_files=[data],
            output_dir=root / "out",
            hyperparameters={
                "batch_size": args.batch,
                "max_seq_len": args.max_len,
                "learning_rate": LR,
                "weight_decay": WEIGHT_DECAY,
                "max_grad_norm": MAX_GRAD_NORM,
                "lr_scheduler_type": "constant",
                "packing": True,
                "logging_steps": 1,  # per-step losses, as the peers log them
                "seed": args.seed,
                "lora_rank": LORA_RANK,
                "lora_alpha": LORA_ALPHA,
                "lora_dropout": 0.0,
            },
        )
        events = clock_events(spec.events_path, meter, args.warmup, len(steps), losses, setup)
        with events:
            code = run_training(spec, events, StopFlag())
        if code != 0:
            raise RuntimeError(f"our run exited with {code}: {spec.events_path.read_text()[-2000:]}")
    return {**finish(meter, losses), "setup": setup}


def finish(meter: Meter, losses: list[float]) -> dict:
    gc.collect()
    return {"seconds": meter.secs, "cpu_seconds": meter.cpu, "losses": losses, **meter.close()}


RUNS: dict[str, Callable[..., dict]] = {
    "tunehouse": run_ours,
    "hf_padded": lambda config, steps, args: run_hf("hf_padded", config, steps, args),
    "hf_padding_free": lambda config, steps, args: run_hf("hf_padding_free", config, steps, args),
    "trl_sft_packed": run_trl,
}


def table(rows: dict[str, dict]) -> str:
    head = f"{'run':<17}{'tok/s':>10}{'tok/CPU-s':>11}{'MFU':>8}{'peak MB':>10}{'final loss':>12}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(
            f"{name:<17}{r['tokens_per_s']:>10.1f}{r['tokens_per_cpu_s']:>11.1f}{mfu:>8}"
            f"{r['peak_mem_mb']:>10.0f}{r['final_loss']:>12.4f}"
        )
    return "\n".join(lines)


SCENARIOS = ("chat", "text")


def run_scenario(scenario: str, config, args, peak: float | None) -> dict:
    """All runs on one scenario's data, ``--rounds`` times in alternating order; the scenario's report."""
    lengths = make_lengths(args.batch * args.steps, args.median_len, args.max_len, args.seed)
    if scenario == "chat":
        samples = chat_samples(lengths, args.vocab, args.seed, args.prompt_share)
    else:
        samples = text_samples(lengths, args.vocab, args.seed)
    steps = [samples[i * args.batch : (i + 1) * args.batch] for i in range(args.steps)]
    timed = steps[args.warmup :]
    real = sum(len(s) for step in timed for s in step)
    params = count_params(config)
    flops = model_flops(config, params, timed, lora=args.method == "lora")

    names = args.runs.split(",")
    each: dict[str, list[dict]] = {name: [] for name in names}
    # Other work on a shared machine skews single runs: alternate the order each round, keep the best.
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in failed:
                continue
            try:
                # Copies each: SFTTrainer sets the config's pad token id, which changes the next model's
                # init (the padding row of the embedding), and no run may change the next one's examples.
                each[name].append(RUNS[name](copy.deepcopy(config), copy.deepcopy(steps), args))
            except Exception as exc:  # noqa: BLE001 - one run failing (a peer out of memory) is a result too
                failed[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                print(f"run {name} failed: {failed[name]}", file=sys.stderr)
                gc.collect()
                if CUDA:
                    torch.cuda.empty_cache()
    results: dict[str, dict] = {}
    for name, rs in each.items():
        if not rs:
            continue
        fastest = min(rs, key=lambda r: r["seconds"])
        results[name] = {
            "tokens_per_s": real / fastest["seconds"],
            "tokens_per_cpu_s": max(real / r["cpu_seconds"] for r in rs),
            "mfu": flops / fastest["seconds"] / peak if peak else None,
            "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
            # RSS when the run began: on CPU the peak includes what earlier runs left in the allocator.
            "mem_at_start_mb": fastest.get("rss_start_mb"),
            "final_loss": fastest["losses"][-1],
            "losses": [round(x, 4) for x in fastest["losses"]],
            "seconds_each": [round(r["seconds"], 2) for r in rs],
            "cpu_seconds_each": [round(r["cpu_seconds"], 2) for r in rs],
            **({"setup": fastest["setup"]} if "setup" in fastest else {}),
        }
    ratios = {}
    if "tunehouse" in results and len(results) > 1:
        peers = {k: v for k, v in results.items() if k != "tunehouse"}
        ours = results["tunehouse"]
        for metric in ("tokens_per_s", "tokens_per_cpu_s"):
            best = max(peers, key=lambda k, m=metric: peers[k][m])
            ratios[f"{metric}_vs_best"] = {
                "peer": best,
                "ratio": round(ours[metric] / peers[best][metric], 3),
            }
        least = min(peers, key=lambda k: peers[k]["peak_mem_mb"])
        ratios["peak_mem_vs_least"] = {
            "peer": least,
            "ratio": round(ours["peak_mem_mb"] / peers[least]["peak_mem_mb"], 3),
        }
    # Equal loss: every run's per-step losses against the first run's, step by step.
    gaps: dict[str, float] = {}
    if results:
        first = next(iter(results.values()))["losses"]
        for name, r in results.items():
            same = len(r["losses"]) == len(first)
            diffs = [abs(a - b) for a, b in zip(r["losses"], first, strict=False)]
            gaps[name] = max(diffs, default=0.0) if same else math.inf
    gap = max(gaps.values(), default=0.0)
    rounded = {
        k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in r.items()} for k, r in results.items()
    }
    return {
        "scenario": scenario,
        "labelled_share": round(labelled_share(samples), 4),
        "tokens_per_step": [sum(len(s) for s in step) for step in steps],
        "timed_steps": len(timed),
        "timed_tokens": real,
        "mean_len": round(sum(lengths) / len(lengths), 1),
        "runs": rounded,
        "failed": failed,
        "ours_over_peer": ratios,
        "max_loss_gap": round(gap, 5),
        "loss_gap_by_run": {k: round(v, 5) for k, v in gaps.items()},
        "losses_equal": gap <= LOSS_TOLERANCE,
        "_results": results,
    }


# Per-step losses of the runs may differ by kernel rounding (different matmul and reduction orders).
LOSS_TOLERANCE = 2e-3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="examples per optimizer step (one micro-batch)")
    ap.add_argument("--median-len", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument(
        "--shape",
        choices=["custom", "qwen2.5-0.5b", "llama3-8b"],
        default="custom",
        help="a real model's shape (random weights) instead of --vocab/--hidden/--layers",
    )
    ap.add_argument("--family", choices=["qwen2", "llama"], default="qwen2", help="for the custom shape")
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "both"],
        default="both",
        help="chat: SFT on conversations, loss on the replies only; text: every token learned",
    )
    ap.add_argument(
        "--prompt-share", type=float, default=0.5, help="chat: mean share of a conversation in its prompt"
    )
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat all runs, alternating their order; best of each"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup >= args.steps:
        ap.error("--warmup must be below --steps")

    config = make_config(args.vocab, args.hidden, args.layers, args.shape, args.family)
    args.vocab = config.vocab_size
    device = torch.cuda.get_device_name(0) if CUDA else f"cpu x{torch.get_num_threads()}"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device), None) if CUDA else None
    scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
    reports = {name: run_scenario(name, config, args, peak) for name in scenarios}

    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for package in ("trl", "peft", "liger_kernel"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package.replace("_", "-"))
    head = {
        "bench": "trainer_throughput",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": device,
        "params": count_params(config),
        "model": f"{config.model_type} hidden={config.hidden_size} layers={config.num_hidden_layers} "
        f"vocab={config.vocab_size}" + ("" if args.shape == "custom" else f" ({args.shape} shape)"),
        "method": args.method,
        "examples_per_step": args.batch,
        "rounds": args.rounds,
        **versions,
    }
    public = {name: {k: v for k, v in r.items() if k != "_results"} for name, r in reports.items()}
    # One scenario: its fields at the top level (as gpu_check.sh reads them); both: one entry each.
    body = next(iter(public.values())) if len(public) == 1 else {"scenarios": public}
    report = json.dumps({**head, **body})
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    for name, r in reports.items():
        share = f"{r['labelled_share']:.0%} of targets labelled"
        print(f"\n== {name} ({share}, {r['timed_tokens']} timed tokens)")
        print(table(r["_results"]))
        for key, ratio in r["ours_over_peer"].items():
            print(f"ours / {ratio['peer']}: {ratio['ratio']} ({key})")
        verdict = "equal" if r["losses_equal"] else "NOT equal"
        print(
            f"per-step losses {verdict} (largest gap {r['max_loss_gap']}, tolerance {LOSS_TOLERANCE}; "
            f"by run: {r['loss_gap_by_run']})"
        )


if __name__ == "__main__":
    main()
