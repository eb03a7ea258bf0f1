"""The training loop: plain PyTorch over transformers models and PEFT adapters.

One optimizer step consumes ``batch_size * gradient_accumulation_steps`` examples, split into
micro-batches of ``batch_size`` (packed or padded); the loss is normalized over the whole step, so
packing, accumulation and an out-of-memory retry with smaller micro-batches all compute the same
update. Events go out after every step.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from .batching import Batch, collate, collate_packed
from .checkpoint import (
    REFERENCE_FILE,
    TrainState,
    best_step,
    is_checkpoint,
    is_lora_checkpoint,
    list_checkpoints,
    load_state,
    restore_rng,
    rotate,
    save_checkpoint,
)
from .data import DataError, formats_for_train_mode, load_records
from .diskspace import dir_bytes, ensure_room, written_whole
from .events import EventWriter
from .spec import EXIT_STOPPED, EXIT_SUCCEEDED, RunSpec, StopFlag
from .tensorboard import ScalarWriter
from .tokenization import (
    IGNORE_INDEX,
    Example,
    Pair,
    TokenizedRow,
    assemble,
    split_holdout,
    tokenize_file,
    tokenizer_fingerprint,
)

T = TypeVar("T")


class NonFiniteLoss(Exception):
    def __init__(self, what: str, value: float, step: int, learning_rate: float, dtype: torch.dtype) -> None:
        self.step = step
        super().__init__(
            f"{what} became {value} at step {step} (learning_rate={learning_rate:.3g}, "
            f"dtype={str(dtype).removeprefix('torch.')}); lower the learning rate or check the data"
        )


# -- losses ----------------------------------------------------------------------------------------


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


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the summed log-probability of its labelled next tokens."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.view(targets.shape).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss, per-pair reward margin) of the sigmoid DPO objective."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


# -- schedule, order, retries -----------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # Seeded per epoch and independent of the global RNG, so the order never depends on history.
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


def lr_factor(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def with_oom_retry(
    step: Callable[[int], T], micro_batch: int, on_retry: Callable[[int, BaseException], None]
) -> tuple[T, int]:
    """Run ``step(micro_batch)``; on out-of-memory, call ``on_retry(smaller, error)`` and run it once
    more with half the micro-batch. The step's example count is fixed by the caller, so halving the
    micro-batch doubles the accumulation. Returns (result, micro-batch that worked)."""
    try:
        return step(micro_batch), micro_batch
    except torch.OutOfMemoryError as exc:
        if micro_batch <= 1:
            raise
        smaller = micro_batch // 2
        on_retry(smaller, exc)
        return step(smaller), smaller


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _rng_snapshot() -> tuple[torch.Tensor, list[torch.Tensor] | None, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.random.get_rng_state(), cuda, random.getstate()


def _rng_restore(snapshot: tuple[torch.Tensor, list[torch.Tensor] | None, Any]) -> None:
    cpu, cuda, py = snapshot
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)


@dataclass
class StepResult:
    loss_sum: float = 0.0  # summed token loss (sft) or summed pair loss (dpo)
    units: int = 0  # target tokens (sft) or pairs (dpo) the loss is averaged over
    real_tokens: int = 0
    positions: int = 0
    correct: int = 0
    targets: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.units)


@dataclass
class Window:
    """Running sums between two metrics events (or since the session started)."""

    losses: list[float] = field(default_factory=list)
    real_tokens: int = 0
    positions: int = 0
    correct: int = 0
    targets: int = 0
    extra: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, result: StepResult) -> None:
        self.losses.append(result.loss)
        self.real_tokens += result.real_tokens
        self.positions += result.positions
        self.correct += result.correct
        self.targets += result.targets
        for key, value in result.extra.items():
            self.extra.setdefault(key, []).append(value)

    @property
    def padding_share(self) -> float:
        return round(1 - self.real_tokens / self.positions, 4) if self.positions else 0.0

    def tokens_per_second(self) -> float:
        return round(self.real_tokens / max(time.monotonic() - self.started, 1e-9), 2)


class Trainer:
    def __init__(self, spec: RunSpec, events: EventWriter, stop: StopFlag) -> None:
        self.spec = spec
        self.hp = spec.hyperparameters
        self.events = events
        self.stop = stop
        self.checkpoint_bytes = 0  # size of the last checkpoint written
        self.output_dir = spec.output_dir.resolve()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        # Frozen LoRA base weights can live in bf16; full fine-tuning keeps fp32 master weights and
        # gets bf16 speed from autocast instead.
        self.load_dtype = torch.bfloat16 if use_bf16 and spec.method == "lora" else torch.float32
        self.autocast = use_bf16
        self.dpo = spec.train_mode == "dpo"
        self.packing = spec.packing
        self.micro = self.hp.batch_size
        self.eval_micro: int | None = None  # set lower than ``micro`` once a no-grad pass ran out of memory
        self.per_step = self.hp.batch_size * self.hp.gradient_accumulation_steps
        self.train_items: list[Any] = []  # Examples, or Pairs for DPO
        self.eval_items: list[Any] = []
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        init = spec.init_from
        full_init = init is not None and init.kind == "full"
        self.base_path = (init.path if full_init else spec.model_path).resolve()
        # DPO's reference is the starting policy: the base with the adapter switched off when a fresh
        # adapter is trained on it; otherwise log-probs computed once before the first step.
        self.reference_mode = None
        if self.dpo:
            fresh_adapter = spec.method == "lora" and (init is None or init.kind == "full")
            self.reference_mode = "adapter_off" if fresh_adapter else "precomputed"
        self.reference: dict[str, torch.Tensor] = {}
        self.pad_id = 0

    # -- setup -----------------------------------------------------------------------------------

    def _check_init(self) -> None:
        init = self.spec.init_from
        if init is None:
            return
        marker = "adapter_config.json" if init.kind == "lora_adapter" else "config.json"
        if not (init.path / marker).is_file():
            raise RuntimeError(f"init_from {init.path} is not a {init.kind} directory (no {marker})")

    def _tokenizer_source(self) -> Path:
        init = self.spec.init_from
        if init is not None and init.kind == "full" and (init.path / "tokenizer_config.json").is_file():
            return init.path
        return self.spec.model_path

    def _tokenize(
        self, paths: list[Path], tokenizer: Any, fingerprint: str
    ) -> tuple[list[TokenizedRow], int]:
        allowed = formats_for_train_mode(self.spec.train_mode)
        rows: list[TokenizedRow] = []
        hits = 0
        for path in paths:
            records = load_records(path, allowed)[1]
            file_rows, hit = tokenize_file(
                path,
                records,
                tokenizer,
                self.hp.max_seq_len,
                self.spec.train_mode,
                self.spec.cache_dir,
                fingerprint,
            )
            rows += file_rows
            hits += hit
        return rows, hits

    def _load_data(self, tokenizer: Any) -> None:
        hp, spec = self.hp, self.spec
        fingerprint = tokenizer_fingerprint(tokenizer)
        started = time.monotonic()
        rows, hits = self._tokenize(spec.train_files, tokenizer, fingerprint)
        validation, vhits = self._tokenize(spec.validation_files, tokenizer, fingerprint)
        train_idx, held_idx = split_holdout(len(rows), hp.split_ratio, hp.seed)
        self.events.log(
            f"data: {len(rows)} training row(s) from {len(spec.train_files)} file(s); {len(held_idx)} held "
            f"out for evaluation (split_ratio={hp.split_ratio}%); {len(validation)} validation row(s)"
        )
        files = len(spec.train_files) + len(spec.validation_files)
        cache = "no cache" if spec.cache_dir is None else f"{hits + vhits} of {files} file(s) from the cache"
        self.events.log(f"tokenization: {time.monotonic() - started:.2f}s, {cache}")
        self.train_items, stats = assemble([rows[i] for i in train_idx], pairs=self.dpo)
        policy = "split into chunks" if spec.train_mode == "pretrain" else "truncated at the end"
        stats.policy = policy
        self.events.log(stats.describe("train", hp.max_seq_len))
        held = [rows[i] for i in held_idx] + validation
        if held:
            self.eval_items, eval_stats = assemble(held, pairs=self.dpo)
            eval_stats.policy = policy
            self.events.log(eval_stats.describe("eval", hp.max_seq_len))
        if not self.train_items:
            raise DataError(
                f"no usable training examples: all {len(train_idx)} row(s) lost their trainable tokens when "
                f"truncated to max_seq_len={hp.max_seq_len}"
            )

    def _load_model(self, resume: Path | None) -> Any:
        from transformers import AutoModelForCausalLM

        spec, hp, init = self.spec, self.hp, self.spec.init_from
        source = resume if resume is not None and spec.method == "full" else self.base_path
        attn = "sdpa"
        if self.device.type == "cuda":
            try:
                import flash_attn  # noqa: F401 - varlen kernels make packed rows free of masking cost

                attn = "flash_attention_2"
            except ImportError:
                pass
        model = AutoModelForCausalLM.from_pretrained(source, dtype=self.load_dtype, attn_implementation=attn)
        model.config.use_cache = False
        adapter_init = init is not None and init.kind == "lora_adapter" and resume is None
        if spec.method == "full" and adapter_init:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, init.path).merge_and_unload()
            model.requires_grad_(True)  # PEFT froze the base while the adapter was attached
            self.events.log(f"init_from: merged the adapter {init.path} into the base for full training")
        if spec.method == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if resume is not None:
                model = PeftModel.from_pretrained(model, resume, is_trainable=True)
            elif adapter_init:
                model = PeftModel.from_pretrained(model, init.path, is_trainable=True)
                self.events.log(f"init_from: continuing to train the adapter {init.path}")
            else:
                config = LoraConfig(
                    r=hp.lora_rank,
                    lora_alpha=hp.lora_alpha,
                    lora_dropout=hp.lora_dropout,
                    target_modules=hp.lora_target_modules,
                    task_type="CAUSAL_LM",
                )
                model = get_peft_model(model, config)
        if init is not None and init.kind == "full" and resume is None:
            self.events.log(f"init_from: starting from the full weights in {init.path}")
        if hp.gradient_checkpointing:
            # Non-reentrant checkpointing needs no input grads, so it works under frozen LoRA bases too.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's new name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.to(self.device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        dtype = str(self.load_dtype).removeprefix("torch.")
        self.events.log(
            f"model: {spec.train_mode} {spec.method} on {self.device.type}, weights {dtype}"
            f"{', bf16 autocast' if self.autocast else ''}, attention {attn}, "
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
        fused = self.device.type == "cuda"
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hp.learning_rate, fused=fused)

    # -- forward passes --------------------------------------------------------------------------

    def _batch(self, examples: list[Example], pack: bool | None = None) -> Batch:
        if self.packing if pack is None else pack:
            return collate_packed(examples, self.hp.max_seq_len, self.pad_id, self.device)
        return collate(examples, self.pad_id, self.device)

    def _logits(self, model: Any, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model(**batch.model_inputs()).logits

    def _pair_logps(
        self, model: Any, pairs: list[Pair]
    ) -> tuple[torch.Tensor, torch.Tensor, Batch, torch.Tensor]:
        """(chosen log-probs, rejected log-probs, the batch, its logits): both replies in one forward."""
        batch = self._batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pack=False)
        logits = self._logits(model, batch)
        logps = sequence_logps(logits, batch.labels)
        return logps[: len(pairs)], logps[len(pairs) :], batch, logits

    def _reference_logps(
        self, model: Any, pairs: list[Pair], split: str, indices: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_mode == "adapter_off":
            with torch.no_grad(), model.disable_adapter():
                chosen, rejected, _, _ = self._pair_logps(model, pairs)
            return chosen, rejected
        ref = self.reference[split][indices].to(self.device)
        return ref[:, 0], ref[:, 1]

    def _forward_only(self, what: str, work: Callable[[int], T]) -> T:
        """Run a no-grad pass over the data in micro-batches of the size ``work`` is given. On out-of-memory
        it is retried once with half, and later passes keep the smaller size; the results do not depend
        on it, because every pass sums over examples."""
        size = min(self.eval_micro or self.micro, self.micro)

        def on_retry(smaller: int, exc: BaseException) -> None:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.events.log(f"out of memory during {what}: retrying with micro-batch {smaller} (was {size})")

        result, used = with_oom_retry(work, size, on_retry)
        if used != size:
            self.eval_micro = used
        return result

    def _compute_reference(self, model: Any) -> dict[str, torch.Tensor]:
        return self._forward_only("the DPO reference pass", lambda micro: self._reference_pass(model, micro))

    @torch.no_grad()
    def _reference_pass(self, model: Any, micro: int) -> dict[str, torch.Tensor]:
        model.eval()
        out = {}
        for split, items in (("train", self.train_items), ("eval", self.eval_items)):
            rows = []
            for chunk in _chunks(items, micro):
                chosen, rejected, _, _ = self._pair_logps(model, chunk)
                rows.append(torch.stack([chosen, rejected], dim=1).float().cpu())
            out[split] = torch.cat(rows) if rows else torch.zeros((0, 2))
        model.train()
        return out

    def _sft_step(self, model: Any, examples: list[Example], micro: int) -> StepResult:
        result = StepResult(units=sum(e.targets for e in examples))
        for chunk in _chunks(examples, micro):
            batch = self._batch(chunk)
            loss_sum, n, correct = token_loss(self._logits(model, batch), batch.labels)
            (loss_sum / max(1, result.units)).backward()
            result.loss_sum += float(loss_sum.detach())
            result.targets += n
            result.correct += correct
            result.real_tokens += batch.real_tokens
            result.positions += batch.positions
        return result

    def _dpo_step(self, model: Any, pairs: list[Pair], indices: list[int], micro: int) -> StepResult:
        beta = self.hp.dpo_beta
        result = StepResult(units=len(pairs))
        margins, wins = [], 0
        for chunk, chunk_idx in zip(_chunks(pairs, micro), _chunks(indices, micro), strict=True):
            ref_chosen, ref_rejected = self._reference_logps(model, chunk, "train", chunk_idx)
            chosen, rejected, batch, logits = self._pair_logps(model, chunk)
            losses, margin = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
            (losses.sum() / len(pairs)).backward()
            result.loss_sum += float(losses.detach().sum())
            margins += margin.detach().float().tolist()
            wins += int((margin > 0).sum())
            k = len(chunk)
            _, n, correct = token_loss(logits[:k].detach(), batch.labels[:k])
            result.targets += n
            result.correct += correct
            result.real_tokens += batch.real_tokens
            result.positions += batch.positions
        result.extra = {"reward_accuracy": wins / len(pairs), "reward_margin": sum(margins) / len(margins)}
        return result

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, model: Any) -> dict[str, float]:
        return self._forward_only("evaluation", lambda micro: self._evaluation_pass(model, micro))

    @torch.no_grad()
    def _evaluation_pass(self, model: Any, micro: int) -> dict[str, float]:
        model.eval()
        loss_sum, units, tokens, correct, wins = 0.0, 0, 0, 0, 0
        margins: list[float] = []
        for start in range(0, len(self.eval_items), micro):
            chunk = self.eval_items[start : start + micro]
            if self.dpo:
                idx = list(range(start, start + len(chunk)))
                ref_chosen, ref_rejected = self._reference_logps(model, chunk, "eval", idx)
                chosen, rejected, batch, logits = self._pair_logps(model, chunk)
                losses, margin = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.hp.dpo_beta)
                loss_sum += float(losses.sum())
                units += len(chunk)
                margins += margin.float().tolist()
                wins += int((margin > 0).sum())
                _, n, ok = token_loss(logits[: len(chunk)], batch.labels[: len(chunk)])
            else:
                batch = self._batch(chunk)
                batch_loss, n, ok = token_loss(self._logits(model, batch), batch.labels)
                loss_sum += float(batch_loss)
                units += n
            tokens += n
            correct += ok
        model.train()
        metrics = {"eval_loss": loss_sum / max(1, units), "eval_token_accuracy": correct / max(1, tokens)}
        if self.dpo:
            metrics["eval_reward_accuracy"] = wins / max(1, units)
            metrics["eval_reward_margin"] = sum(margins) / max(1, len(margins))
        return metrics

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
        self._check_init()

        tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_source())
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, any id will do
        self.pad_id = tokenizer.pad_token_id
        self._load_data(tokenizer)
        if self.stop.requested:
            events.status("stopped")
            return EXIT_STOPPED

        random.seed(hp.seed)
        torch.manual_seed(hp.seed)
        model = self._load_model(resume)
        optimizer = self._optimizer(model)
        steps_per_epoch = math.ceil(len(self.train_items) / self.per_step)
        total_steps = steps_per_epoch * hp.epochs
        warmup_steps = round(total_steps * hp.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(hp.lr_scheduler_type, total_steps, warmup_steps)
        )

        if resume is not None:
            state = load_state(resume)
            if state.train_examples != len(self.train_items):
                raise DataError(
                    f"training data changed since the checkpoint: it was taken with {state.train_examples} "
                    f"example(s), now there are {len(self.train_items)}"
                )
            if state.examples_per_step and state.examples_per_step != self.per_step:
                raise RuntimeError(
                    f"batch_size * gradient_accumulation_steps is {self.per_step} but the checkpoint was "
                    f"taken with {state.examples_per_step}; an exact resume needs the same step size"
                )
            optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location=self.device))
            scheduler.load_state_dict(torch.load(resume / "scheduler.pt"))
            state.total_steps, state.steps_per_epoch, state.run_id = total_steps, steps_per_epoch, spec.run_id
            state.examples_per_step = self.per_step
            self.micro = min(state.micro_batch_size or self.micro, self.micro)
            if not state.order and state.epoch < hp.epochs:
                state.order = epoch_order(len(self.train_items), hp.seed, state.epoch)
            if self.reference_mode == "precomputed":
                if not (resume / REFERENCE_FILE).is_file():
                    raise RuntimeError(f"resume_from {resume} has no {REFERENCE_FILE} for the DPO reference")
                self.reference = torch.load(resume / REFERENCE_FILE, weights_only=True)
            restore_rng(resume)  # last, so model construction above cannot disturb the streams
            events.log(f"resumed from {resume} at step {state.step} of {total_steps}")
        else:
            state = TrainState(
                order=epoch_order(len(self.train_items), hp.seed, 0),
                total_steps=total_steps,
                steps_per_epoch=steps_per_epoch,
                train_examples=len(self.train_items),
                method=spec.method,
                run_id=spec.run_id,
                examples_per_step=self.per_step,
                micro_batch_size=self.micro,
            )
            if self.reference_mode == "precomputed":
                self.reference = self._compute_reference(model)
                events.log(f"dpo: reference log-probs computed for {len(self.train_items)} pair(s)")
        if self.stop.requested:
            events.status("stopped")
            return EXIT_STOPPED

        tensorboard = ScalarWriter(spec.tensorboard_dir)
        try:
            return self._train(model, tokenizer, optimizer, scheduler, state, resume, tensorboard)
        finally:
            tensorboard.close()

    def _train(
        self,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: TrainState,
        resume: Path | None,
        tensorboard: ScalarWriter,
    ) -> int:
        spec, hp, events = self.spec, self.hp, self.events
        total_steps, steps_per_epoch = state.total_steps, state.steps_per_epoch
        events.status("running")
        events.log(
            f"steps: {total_steps} of {self.per_step} example(s) each, micro-batch {self.micro}, "
            f"gradient accumulation {math.ceil(self.per_step / self.micro)}, "
            f"packing {'on' if self.packing else 'off'}, gradient checkpointing "
            f"{'on' if hp.gradient_checkpointing else 'off'}"
            + (f", dpo beta {hp.dpo_beta}, reference {self.reference_mode}" if self.dpo else "")
        )
        model.train()
        saved_step = state.step if resume is not None else -1
        since_ckpt: list[float] = []
        session = Window()
        window = Window()
        session_steps = 0
        checkpoints_dir = spec.checkpoints_dir.resolve()

        def run_eval() -> None:
            self.last_eval = self.evaluate(model)
            self.last_eval_step = state.step
            events.emit("metrics", {"step": state.step, **self.last_eval})
            tensorboard.add_scalars(state.step, self.last_eval, "eval/")

        def checkpoint(evaluate_first: bool = True) -> None:
            nonlocal saved_step
            # A fresh evaluation makes "best" mean these weights, not some earlier step's.
            if evaluate_first and self.eval_items and self.last_eval_step != state.step:
                run_eval()
            metrics = {"train_loss": sum(since_ckpt) / len(since_ckpt)} if since_ckpt else {}
            metrics.update(self.last_eval)
            path = checkpoints_dir / f"step-{state.step}"
            extra = {REFERENCE_FILE: self.reference} if self.reference_mode == "precomputed" else None
            checkpoints_dir.mkdir(parents=True, exist_ok=True)
            ensure_room(path, self.checkpoint_bytes, spec.reserve_bytes)
            save_checkpoint(path, model, tokenizer, optimizer, scheduler, state, metrics, extra)
            self.checkpoint_bytes = dir_bytes(path)  # what the next one will need, about
            current = [c for c in list_checkpoints(checkpoints_dir) if c[0] <= state.step]
            best = best_step(current) == state.step
            payload = {"step": state.step, "path": str(path), "metrics": metrics, "best": best}
            events.emit("checkpoint", payload)
            for step, gone in rotate(checkpoints_dir, hp.save_total_limit, upto=state.step):
                events.emit("checkpoint_deleted", {"step": step, "path": str(gone)})
            since_ckpt.clear()
            saved_step = state.step

        while state.step < total_steps and state.epoch < hp.epochs:
            indices = state.order[state.batch_index * self.per_step : (state.batch_index + 1) * self.per_step]
            items = [self.train_items[i] for i in indices]
            lr = scheduler.get_last_lr()[0]
            result, grad_norm = self.train_step(model, optimizer, scheduler, items, indices, state.step + 1)
            state.micro_batch_size = self.micro

            state.step += 1
            state.batch_index += 1
            state.trained_tokens += result.real_tokens
            epoch_done = state.batch_index >= steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.batch_index = 0
                state.order = (
                    epoch_order(len(self.train_items), hp.seed, state.epoch)
                    if state.epoch < hp.epochs
                    else []
                )
            session_steps += 1
            session.add(result)
            window.add(result)
            since_ckpt.append(result.loss)

            elapsed = max(time.monotonic() - session.started, 1e-9)
            events.emit(
                "progress",
                {
                    "step": state.step,
                    "total_steps": total_steps,
                    "epoch": round(state.step / steps_per_epoch, 4),
                    "percent": int(100 * state.step / total_steps),
                    "tokens_per_second": session.tokens_per_second(),
                    "eta_seconds": round(elapsed / session_steps * (total_steps - state.step), 2),
                    "trained_tokens": state.trained_tokens,
                    "padding_share": session.padding_share,
                },
            )
            last = state.step == total_steps
            if state.step % max(1, hp.logging_steps) == 0 or last:
                metrics = {
                    "train_loss": sum(window.losses) / len(window.losses),
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_second": window.tokens_per_second(),
                    "padding_share": window.padding_share,
                    "train_token_accuracy": window.correct / max(1, window.targets),
                    **{f"train_{k}": sum(v) / len(v) for k, v in window.extra.items()},
                }
                events.emit("metrics", {"step": state.step, **metrics})
                tensorboard.add_scalars(state.step, metrics, "train/")
                window = Window()
            if self.eval_items and (
                (hp.eval_steps and (state.step % hp.eval_steps == 0 or last))
                or (not hp.eval_steps and epoch_done)
            ):
                run_eval()
            if hp.save_steps and state.step % hp.save_steps == 0:
                checkpoint()
            if last:
                break
            self._sleep(hp.step_delay)
            if self.stop.requested:
                if saved_step != state.step:
                    checkpoint(evaluate_first=False)  # stop promptly: no extra evaluation pass
                events.status("stopped")
                return EXIT_STOPPED

        if saved_step != state.step:
            checkpoint()
        self._save_model(model, tokenizer, state.trained_tokens)
        events.status("succeeded")
        return EXIT_SUCCEEDED

    def train_step(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        items: list[Any],
        indices: list[int],
        step_number: int,
    ) -> tuple[StepResult, float]:
        """One optimizer step over ``items`` (micro-batched, packed, OOM-retried); (result, grad norm)."""
        lr = scheduler.get_last_lr()[0]
        snapshot = _rng_snapshot()

        def attempt(micro: int) -> StepResult:
            _rng_restore(snapshot)  # a retried step draws the same dropout masks
            optimizer.zero_grad(set_to_none=True)
            if self.dpo:
                return self._dpo_step(model, items, indices, micro)
            return self._sft_step(model, items, micro)

        def on_retry(smaller: int, exc: BaseException) -> None:
            optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            before, after = math.ceil(self.per_step / self.micro), math.ceil(self.per_step / smaller)
            self.events.log(
                f"out of memory at step {step_number}: retrying with micro-batch {smaller} (was "
                f"{self.micro}) and gradient accumulation {after} (was {before}); the step still "
                f"covers {len(items)} example(s)"
            )

        result, self.micro = with_oom_retry(attempt, self.micro, on_retry)
        if not math.isfinite(result.loss):
            raise NonFiniteLoss("loss", result.loss, step_number, lr, self.load_dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = self.hp.max_grad_norm if self.hp.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss("gradient norm", grad_norm, step_number, lr, self.load_dtype)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return result, grad_norm

    def _sleep(self, seconds: float) -> None:
        # Short naps so a SIGTERM during a long step_delay is noticed within a fraction of a second.
        deadline = time.monotonic() + seconds
        while not self.stop.requested and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, remaining))

    def _save_model(self, model: Any, tokenizer: Any, trained_tokens: int) -> None:
        lora = self.spec.method == "lora"
        final = _save_atomically(self.spec.model_dir.resolve(), model, tokenizer)
        payload: dict[str, Any] = {
            "path": str(final),
            "kind": "lora_adapter" if lora else "full",
            # For an adapter: the weights it must be loaded onto.
            "base_model_path": str(self.base_path if lora else self.spec.model_path.resolve()),
            "trained_tokens": trained_tokens,
        }
        if lora and self.hp.merge_adapter:
            merged = model.merge_and_unload()
            payload["merged_path"] = str(_save_atomically(self.spec.merged_dir.resolve(), merged, tokenizer))
        self.events.emit("model", payload)


def _save_atomically(final: Path, model: Any, tokenizer: Any) -> Path:
    import shutil

    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with written_whole(tmp, final):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    return final


def run_training(spec: RunSpec, events: EventWriter, stop: StopFlag) -> int:
    return Trainer(spec, events, stop).run()
