"""The training loop: plain PyTorch, one optimizer step per batch, events after every step."""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import (
    TrainState,
    is_checkpoint,
    is_lora_checkpoint,
    load_state,
    restore_rng,
    save_checkpoint,
)
from .data import DataError, Record, formats_for_train_mode, load_records
from .events import EventWriter
from .spec import EXIT_STOPPED, EXIT_SUCCEEDED, RunSpec, StopFlag
from .tokenization import IGNORE_INDEX, Example, split_holdout, tokenize_records


class NonFiniteLoss(Exception):
    def __init__(self, what: str, value: float, step: int, learning_rate: float, dtype: torch.dtype) -> None:
        self.step = step
        super().__init__(
            f"{what} became {value} at step {step} (learning_rate={learning_rate:.3g}, "
            f"dtype={str(dtype).removeprefix('torch.')}); lower the learning rate or check the data"
        )


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: list[Example], pad_id: int, device: torch.device) -> Batch:
    # Dynamic padding: each batch is only as long as its longest example.
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(summed cross-entropy, labelled token count, correctly predicted count) for next-token targets."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss_sum, int(mask.sum()), int(correct)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # Seeded per epoch and independent of the global RNG, so the order never depends on history.
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _read_files(paths: list[Path], allowed: set[str]) -> list[Record]:
    records: list[Record] = []
    for path in paths:
        records += load_records(path, allowed)[1]
    return records


def _linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class Trainer:
    def __init__(self, spec: RunSpec, events: EventWriter, stop: StopFlag) -> None:
        self.spec = spec
        self.hp = spec.hyperparameters
        self.events = events
        self.stop = stop
        self.output_dir = spec.output_dir.resolve()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        # Frozen LoRA base weights can live in bf16; full fine-tuning keeps fp32 master weights and
        # gets bf16 speed from autocast instead.
        self.load_dtype = torch.bfloat16 if use_bf16 and spec.method == "lora" else torch.float32
        self.autocast = use_bf16
        self.train_examples: list[Example] = []
        self.eval_examples: list[Example] = []
        self.last_eval: dict[str, float] = {}

    # -- setup -----------------------------------------------------------------------------------

    def _load_data(self, tokenizer: Any) -> None:
        hp, spec = self.hp, self.spec
        allowed = formats_for_train_mode(spec.train_mode)
        rows = _read_files(spec.train_files, allowed)
        validation = _read_files(spec.validation_files, allowed)
        train_idx, held_idx = split_holdout(len(rows), hp.split_ratio, hp.seed)
        train = [rows[i] for i in train_idx]
        held = [rows[i] for i in held_idx] + validation
        self.events.log(
            f"data: {len(rows)} training row(s) from {len(spec.train_files)} file(s); {len(held_idx)} held "
            f"out for evaluation (split_ratio={hp.split_ratio}%); {len(validation)} validation row(s)"
        )
        self.train_examples, stats = tokenize_records(train, tokenizer, hp.max_seq_len)
        self.events.log(stats.describe("train", hp.max_seq_len))
        if held:
            self.eval_examples, eval_stats = tokenize_records(held, tokenizer, hp.max_seq_len)
            self.events.log(eval_stats.describe("eval", hp.max_seq_len))
        if not self.train_examples:
            raise DataError(
                f"no usable training examples: all {len(train)} row(s) lost their trainable tokens when "
                f"truncated to max_seq_len={hp.max_seq_len}"
            )

    def _load_model(self, resume: Path | None) -> Any:
        from transformers import AutoModelForCausalLM

        spec, hp = self.spec, self.hp
        source = resume if resume is not None and spec.method == "full" else spec.model_path
        model = AutoModelForCausalLM.from_pretrained(source, dtype=self.load_dtype)
        model.config.use_cache = False
        if spec.method == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if resume is not None:
                model = PeftModel.from_pretrained(model, resume, is_trainable=True)
            else:
                config = LoraConfig(
                    r=hp.lora_rank,
                    lora_alpha=hp.lora_alpha,
                    lora_dropout=hp.lora_dropout,
                    target_modules="all-linear",
                    task_type="CAUSAL_LM",
                )
                model = get_peft_model(model, config)
        model.to(self.device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        dtype = str(self.load_dtype).removeprefix("torch.")
        self.events.log(
            f"model: {spec.method} on {self.device.type}, weights {dtype}, "
            f"{trainable:,} of {total:,} parameters trainable"
        )
        return model

    def _optimizer(self, model: Any) -> torch.optim.Optimizer:
        # The usual convention: no weight decay on biases and norm scales (1-D tensors).
        decay, no_decay = [], []
        for _, param in model.named_parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hp.learning_rate)

    # -- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: Any, pad_id: int) -> dict[str, float]:
        model.eval()
        loss_sum, tokens, correct = 0.0, 0, 0
        bs = self.hp.batch_size
        for start in range(0, len(self.eval_examples), bs):
            batch = collate(self.eval_examples[start : start + bs], pad_id, self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            batch_loss, batch_tokens, batch_correct = token_loss(logits, batch.labels)
            loss_sum += float(batch_loss)
            tokens += batch_tokens
            correct += batch_correct
        model.train()
        return {"eval_loss": loss_sum / max(1, tokens), "eval_token_accuracy": correct / max(1, tokens)}

    # -- main ------------------------------------------------------------------------------------

    def run(self) -> int:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # PEFT calls a transformers API deprecated in v5; the warning is noise in the run's stderr.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        spec, hp, events = self.spec, self.hp, self.events

        resume = spec.resume_from.resolve() if spec.resume_from is not None else None
        if resume is not None:
            if not is_checkpoint(resume):
                raise RuntimeError(f"resume_from {resume} is not a trainer checkpoint")
            if is_lora_checkpoint(resume) != (spec.method == "lora"):
                raise RuntimeError(f"resume_from {resume} was not written by a {spec.method} run")

        tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, any id will do
        pad_id = tokenizer.pad_token_id
        self._load_data(tokenizer)
        if self.stop.requested:
            events.status("stopped")
            return EXIT_STOPPED

        random.seed(hp.seed)
        torch.manual_seed(hp.seed)
        model = self._load_model(resume)
        optimizer = self._optimizer(model)
        steps_per_epoch = math.ceil(len(self.train_examples) / hp.batch_size)
        total_steps = steps_per_epoch * hp.epochs
        warmup_steps = round(total_steps * hp.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total_steps, warmup_steps))

        if resume is not None:
            state = load_state(resume)
            if state.train_examples != len(self.train_examples):
                raise DataError(
                    f"training data changed since the checkpoint: it was taken with {state.train_examples} "
                    f"example(s), now there are {len(self.train_examples)}"
                )
            optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location=self.device))
            scheduler.load_state_dict(torch.load(resume / "scheduler.pt"))
            state.total_steps, state.steps_per_epoch, state.run_id = total_steps, steps_per_epoch, spec.run_id
            if not state.order and state.epoch < hp.epochs:
                state.order = epoch_order(len(self.train_examples), hp.seed, state.epoch)
            restore_rng(resume)  # last, so model construction above cannot disturb the streams
            events.log(f"resumed from {resume} at step {state.step} of {total_steps}")
        else:
            state = TrainState(
                order=epoch_order(len(self.train_examples), hp.seed, 0),
                total_steps=total_steps,
                steps_per_epoch=steps_per_epoch,
                train_examples=len(self.train_examples),
                method=spec.method,
                run_id=spec.run_id,
            )
        if self.stop.requested:
            events.status("stopped")
            return EXIT_STOPPED

        events.status("running")
        model.train()
        saved_step = state.step if resume is not None else -1
        window_loss: list[float] = []
        since_ckpt: list[float] = []
        grad_norm = 0.0
        started = time.monotonic()
        session_steps = 0
        session_tokens = 0

        def checkpoint() -> None:
            nonlocal saved_step
            metrics = {"train_loss": sum(since_ckpt) / len(since_ckpt)} if since_ckpt else {}
            metrics.update(self.last_eval)
            path = spec.checkpoints_dir.resolve() / f"step-{state.step}"
            save_checkpoint(path, model, tokenizer, optimizer, scheduler, state, metrics)
            events.emit("checkpoint", {"step": state.step, "path": str(path), "metrics": metrics})
            since_ckpt.clear()
            saved_step = state.step

        while state.step < total_steps and state.epoch < hp.epochs:
            bs = hp.batch_size
            indices = state.order[state.batch_index * bs : (state.batch_index + 1) * bs]
            batch = collate([self.train_examples[i] for i in indices], pad_id, self.device)
            lr = scheduler.get_last_lr()[0]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss_sum, n_tokens, _ = token_loss(logits, batch.labels)
            loss = loss_sum / max(1, n_tokens)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise NonFiniteLoss("loss", loss_value, state.step + 1, lr, self.load_dtype)
            loss.backward()
            params = [p for p in model.parameters() if p.requires_grad]
            max_norm = hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss("gradient norm", grad_norm, state.step + 1, lr, self.load_dtype)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.batch_index += 1
            epoch_done = state.batch_index >= steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.batch_index = 0
                state.order = (
                    epoch_order(len(self.train_examples), hp.seed, state.epoch)
                    if state.epoch < hp.epochs
                    else []
                )
            session_steps += 1
            session_tokens += batch.tokens
            window_loss.append(loss_value)
            since_ckpt.append(loss_value)

            elapsed = max(time.monotonic() - started, 1e-9)
            events.emit(
                "progress",
                {
                    "step": state.step,
                    "total_steps": total_steps,
                    "epoch": round(state.step / steps_per_epoch, 4),
                    "percent": int(100 * state.step / total_steps),
                    "tokens_per_second": round(session_tokens / elapsed, 2),
                    "eta_seconds": round(elapsed / session_steps * (total_steps - state.step), 2),
                },
            )
            last = state.step == total_steps
            if state.step % max(1, hp.logging_steps) == 0 or last:
                events.emit(
                    "metrics",
                    {
                        "step": state.step,
                        "train_loss": sum(window_loss) / len(window_loss),
                        "learning_rate": lr,
                        "grad_norm": grad_norm,
                    },
                )
                window_loss.clear()
            if self.eval_examples and (
                (hp.eval_steps and (state.step % hp.eval_steps == 0 or last))
                or (not hp.eval_steps and epoch_done)
            ):
                self.last_eval = self.evaluate(model, pad_id)
                events.emit("metrics", {"step": state.step, **self.last_eval})
            if hp.save_steps and state.step % hp.save_steps == 0:
                checkpoint()
            if last:
                break
            self._sleep(hp.step_delay)
            if self.stop.requested:
                if saved_step != state.step:
                    checkpoint()
                events.status("stopped")
                return EXIT_STOPPED

        if saved_step != state.step:
            checkpoint()
        self._save_model(model, tokenizer)
        events.status("succeeded")
        return EXIT_SUCCEEDED

    def _sleep(self, seconds: float) -> None:
        # Short naps so a SIGTERM during a long step_delay is noticed within a fraction of a second.
        deadline = time.monotonic() + seconds
        while not self.stop.requested and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, remaining))

    def _save_model(self, model: Any, tokenizer: Any) -> None:
        import shutil

        final = self.spec.model_dir.resolve()
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        self.events.emit(
            "model",
            {
                "path": str(final),
                "kind": "lora_adapter" if self.spec.method == "lora" else "full",
                "base_model_path": str(self.spec.model_path.resolve()),
            },
        )


def run_training(spec: RunSpec, events: EventWriter, stop: StopFlag) -> int:
    return Trainer(spec, events, stop).run()
