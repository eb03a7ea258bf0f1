"""The training loop: plain PyTorch over transformers models and PEFT adapters.

One optimizer step consumes ``batch_size * gradient_accumulation_steps`` examples, split into
micro-batches of ``batch_size`` (packed or padded); the loss is normalized over the whole step, so
packing, accumulation and an out-of-memory retry with smaller micro-batches all compute the same
update. Events go out after every step.

What a step optimizes belongs to the train mode's objective (objectives.py); this module owns the
order of things: setup, exact resume (model, optimizer, scheduler, RNG, data position), the steps,
when to evaluate and checkpoint, stopping on SIGTERM, and every event of the run.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunehouse.contract.datasets import DataError
from tunehouse.contract.spec import EXIT_STOPPED, EXIT_SUCCEEDED, RunSpec

from . import distributed
from .checkpoint import Checkpointer, TrainState, is_checkpoint, is_lora_checkpoint, load_state, restore_rng
from .dataset import load_items
from .diskspace import dir_bytes, ensure_room
from .evaluation import Evaluator
from .events import EventWriter
from .forward import Forward, plain_head
from .losses import token_loss, token_sums
from .memory import NoGradRetry, with_oom_retry
from .modeling import (
    base_path,
    check_init,
    choose_placement,
    enable_checkpointing,
    load_model,
    save_model,
    tokenizer_source,
)
from .objectives import OBJECTIVES, Objective, StepResult
from .optim import build_optimizer, build_scheduler
from .planner import plan_for
from .regional_compile import BUCKET, compile_layers, compile_wanted, decoder_layers
from .step_metrics import NonFiniteLoss, Pending, StepMetrics
from .stop import StopFlag
from .store_sync import StoreSync
from .tensorboard import ScalarWriter
from .tokenization import Example, prepare_tokenizer

MAX_UNREAD = 32  # steps whose metrics may wait on the device for the logging interval

# Imported from here by the entry point and by tests: the names lived in this module before the split.
__all__ = ["NonFiniteLoss", "Trainer", "run_training", "token_loss", "with_oom_retry"]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # Seeded per epoch and independent of the global RNG, so the order never depends on history.
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


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
class Window:
    """Running sums between two metrics events (or since the session started): token counts as
    each step ends, the device-side metrics once they are read."""

    losses: list[float] = field(default_factory=list)
    real_tokens: int = 0
    positions: int = 0
    correct: int = 0
    targets: int = 0
    grad_norm: float = 0.0  # the latest read step's
    extra: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add_tokens(self, result: StepResult) -> None:
        self.real_tokens += result.real_tokens
        self.positions += result.positions

    def add_metrics(self, metrics: StepMetrics) -> None:
        self.losses.append(metrics.loss)
        self.correct += metrics.correct
        self.targets += metrics.targets
        self.grad_norm = metrics.grad_norm
        for key, value in metrics.extra.items():
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
        self.dist = distributed.init()  # rank 0 of 1 unless torchrun started several ranks
        self.place = choose_placement(spec)
        self.objective_type = OBJECTIVES[spec.train_mode]
        self.checkpoint_bytes = 0  # size of the last checkpoint written
        self.micro = self.hp.batch_size
        self.no_grad = NoGradRetry(events.log)  # evaluation and reference passes share its micro-batch
        self.per_step = self.hp.batch_size * self.hp.gradient_accumulation_steps
        self.checkpointing = self.hp.gradient_checkpointing  # or the memory planner turns it on
        self.train_items: list[Any] = []  # Examples, or Pairs for DPO
        self.eval_items: list[Any] = []
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1

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
        check_init(spec)

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(spec))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, any id will do
        if spec.train_mode != "pretrain":
            _, warning = prepare_tokenizer(tokenizer, base_path(spec), spec.chat_template_fallback)
            if warning:
                events.log(f"warning: {warning}")
        self.train_items, self.eval_items = load_items(
            spec, tokenizer, self.objective_type.pairs, self.objective_type.length_policy, events.log
        )
        if self.dist.agree(self.stop.requested):
            events.status("stopped")
            return EXIT_STOPPED

        random.seed(hp.seed)
        torch.manual_seed(hp.seed)
        model, varlen = load_model(spec, self.place, resume, events.log)
        plan = plan_for(
            model,
            self.place.device,
            self.place.state_bytes,
            hp.max_seq_len,
            self.micro,
            self.per_step,
            hp.gradient_checkpointing,
        )
        events.log(plan.line)
        if plan.checkpointing and not self.checkpointing:
            enable_checkpointing(model)
            self.checkpointing = True
        self.micro = plan.micro

        # Sharded or data-parallel models must be called whole (their hooks gather and reduce).
        linear_head = plain_head(model, self.place.device) and not self.dist.active

        def make_forward(bucket: int) -> Forward:
            return Forward(
                self.place.device,
                self.place.autocast,
                spec.packing,
                varlen,
                tokenizer.pad_token_id,
                hp.max_seq_len,
                bucket=bucket,
                linear_head=linear_head,
            )

        bucket = self._compile(model, make_forward(0))
        forward = make_forward(bucket)
        objective = self.objective_type.create(spec, forward)
        model = distributed.wrap(model, spec.method, self.dist, events.log)
        optimizer = build_optimizer(model, hp, self.place.device, events.log)
        steps_per_epoch = math.ceil(len(self.train_items) / self.per_step)
        total_steps = steps_per_epoch * hp.epochs
        scheduler = build_scheduler(optimizer, hp, total_steps)

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
            if self.dist.active:
                distributed.check_world(state, resume, self.dist)
                distributed.load_checkpoint(resume, model, optimizer, self.dist)
            else:
                optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location=self.place.device))
            scheduler.load_state_dict(torch.load(resume / "scheduler.pt"))
            state.total_steps, state.steps_per_epoch, state.run_id = total_steps, steps_per_epoch, spec.run_id
            state.examples_per_step = self.per_step
            state.world_size = self.dist.world
            self.micro = min(state.micro_batch_size or self.micro, self.micro)
            if not state.order and state.epoch < hp.epochs:
                state.order = epoch_order(len(self.train_items), hp.seed, state.epoch)
            objective.resume(resume)
            # Last, so model construction above cannot disturb the streams.
            distributed.restore_rng(resume, self.dist) if self.dist.active else restore_rng(resume)
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
                world_size=self.dist.world,
            )
            splits = {"train": self.train_items, "eval": self.eval_items}
            line = objective.start(model, splits, self.no_grad, self.micro)
            if line:
                events.log(line)
        if self.dist.agree(self.stop.requested):
            events.status("stopped")
            return EXIT_STOPPED

        tensorboard = ScalarWriter(spec.tensorboard_dir) if self.dist.is_main else distributed.NoScalars()
        try:
            return self._train(model, tokenizer, objective, optimizer, scheduler, state, resume, tensorboard)
        finally:
            tensorboard.close()

    def _train(
        self,
        model: Any,
        tokenizer: Any,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: TrainState,
        resume: Path | None,
        tensorboard: ScalarWriter | distributed.NoScalars,
    ) -> int:
        spec, hp, events = self.spec, self.hp, self.events
        total_steps, steps_per_epoch = state.total_steps, state.steps_per_epoch
        events.status("running")
        events.log(
            f"steps: {total_steps} of {self.per_step} example(s) each, micro-batch {self.micro}, "
            f"gradient accumulation {math.ceil(self.per_step / self.micro)}, "
            f"packing {'on' if spec.packing else 'off'}, gradient checkpointing "
            f"{'on' if self.checkpointing else 'off'}, loss from "
            + ("labelled hidden states (linear_ce)" if objective.forward.linear_head else "full logits")
            + objective.describe()
        )
        model.train()
        saved_step = state.step if resume is not None else -1
        since_ckpt: list[float] = []
        session = Window()
        window = Window()
        session_steps = 0
        pending = Pending(self.place.load_dtype)

        def settle() -> None:
            """Read the steps' device-side metrics (failing on a non-finite one) into the sums."""
            nonlocal window
            for read in pending.read():
                window.add_metrics(read)
                since_ckpt.append(read.loss)

        evaluator = Evaluator(objective, self.eval_items, self.no_grad)
        sync = StoreSync(spec) if spec.storage_dir is not None else None
        # Rank 0 alone writes the run's files to the store; of a checkpoint, a rank whose disk rank 0
        # does not share (another node) uploads its own shards first (distributed.save_checkpoint).
        store = sync if self.dist.is_main else None
        checkpointer = Checkpointer(
            spec.checkpoints_dir.resolve(),
            hp.save_total_limit,
            model,
            tokenizer,
            optimizer,
            scheduler,
            store=sync,
            dist=self.dist,
        )

        def run_eval() -> None:
            settle()  # never evaluate (or save) weights a non-finite step produced
            self.last_eval = evaluator.evaluate(model, self.micro)
            self.last_eval_step = state.step
            events.emit("metrics", {"step": state.step, **self.last_eval})
            tensorboard.add_scalars(state.step, self.last_eval, "eval/")

        def checkpoint(evaluate_first: bool = True) -> None:
            nonlocal saved_step
            settle()
            # A fresh evaluation makes "best" mean these weights, not some earlier step's.
            if evaluate_first and self.eval_items and self.last_eval_step != state.step:
                run_eval()
            metrics = {"train_loss": sum(since_ckpt) / len(since_ckpt)} if since_ckpt else {}
            metrics.update(self.last_eval)
            checkpointer.root.mkdir(parents=True, exist_ok=True)
            # Refuse to start a checkpoint the volume cannot hold while keeping the reserve free.
            ensure_room(checkpointer.root / f"step-{state.step}", self.checkpoint_bytes, spec.reserve_bytes)
            path, best = checkpointer.save(state, metrics, objective.checkpoint_files())
            self.checkpoint_bytes = dir_bytes(path)  # what the next one will need, about
            # Reported saved only once it is durably where the run's checkpoints live.
            stored = checkpointer.publish(path)
            payload = {"step": state.step, "path": stored, "metrics": metrics, "best": best}
            events.emit("checkpoint", payload)
            for step, gone in checkpointer.rotate(upto=state.step):
                events.emit("checkpoint_deleted", {"step": step, "path": gone})
            if store is not None:
                store.publish_dir(spec.tensorboard_dir)
            since_ckpt.clear()
            saved_step = state.step

        while state.step < total_steps and state.epoch < hp.epochs:
            indices = state.order[state.batch_index * self.per_step : (state.batch_index + 1) * self.per_step]
            items = [self.train_items[i] for i in indices]
            lr = scheduler.get_last_lr()[0]
            objective.prefetch(self.dist.shard(items, indices)[0], self.micro)
            if state.batch_index + 1 < steps_per_epoch:  # the next epoch's order is drawn later
                following = state.order[(state.batch_index + 1) * self.per_step :][: self.per_step]
                upcoming = [self.train_items[i] for i in following]
                objective.prefetch(self.dist.shard(upcoming, following)[0], self.micro)
            result, grad_norm = self.train_step(
                model, objective, optimizer, scheduler, items, indices, state.step + 1
            )
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
            session.add_tokens(result)
            window.add_tokens(result)
            pending.add(state.step, lr, result, grad_norm)
            if len(pending) >= MAX_UNREAD:
                settle()  # a non-finite loss fails the run within this many steps, whatever the interval

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
                settle()
                metrics = {
                    "train_loss": sum(window.losses) / len(window.losses),
                    "learning_rate": lr,
                    "grad_norm": window.grad_norm,
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
            if self.dist.agree(self.stop.requested):  # a SIGTERM to any rank stops all after this step
                settle()
                if saved_step != state.step:
                    checkpoint(evaluate_first=False)  # stop promptly: no extra evaluation pass
                events.status("stopped")
                return EXIT_STOPPED

        settle()
        if saved_step != state.step:
            checkpoint()
        if self.dist.active:
            model_info = distributed.save_model(
                save_model, spec, model, tokenizer, state.trained_tokens, self.dist
            )
        else:
            model_info = save_model(spec, model, tokenizer, state.trained_tokens)
        if model_info is not None:  # rank 0's
            if store is not None:
                store.publish_dir(spec.tensorboard_dir)
                model_info = store.publish_model(model_info)
            events.emit("model", model_info)
        events.status("succeeded")
        return EXIT_SUCCEEDED

    def train_step(
        self,
        model: Any,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        items: list[Any],
        indices: list[int],
        step_number: int,
    ) -> tuple[StepResult, torch.Tensor]:
        """One optimizer step over ``items`` (micro-batched, packed, OOM-retried); (result, grad norm),
        both left on the device: nothing here waits for it (the loop reads them, see step_metrics.py)."""
        snapshot = _rng_snapshot()

        def attempt(micro: int) -> StepResult:
            _rng_restore(snapshot)  # a retried step draws the same dropout masks
            optimizer.zero_grad(set_to_none=True)
            if self.dist.active:
                return distributed.step(self.dist, objective, model, items, indices, micro)
            return objective.step(model, items, indices, micro)

        def on_retry(smaller: int) -> None:
            optimizer.zero_grad(set_to_none=True)
            before, after = math.ceil(self.per_step / self.micro), math.ceil(self.per_step / smaller)
            self.events.log(
                f"out of memory at step {step_number}: retrying with micro-batch {smaller} (was "
                f"{self.micro}) and gradient accumulation {after} (was {before}); the step still "
                f"covers {len(items)} example(s)"
            )

        if self.dist.active:  # a retry on one rank alone would leave the others waiting in a collective
            result = attempt(self.micro)
        else:
            result, self.micro = with_oom_retry(attempt, self.micro, on_retry)
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = self.hp.max_grad_norm if self.hp.max_grad_norm > 0 else float("inf")
        grad_norm = distributed.local_norm(torch.nn.utils.clip_grad_norm_(params, max_norm)).detach()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return result, grad_norm

    def _compile(self, model: Any, forward: Forward) -> int:
        """Compile the decoder layers when wanted (regional_compile.py); returns the length bucket
        batches must be padded to, 0 when the layers stay eager."""
        wanted, why = compile_wanted(self.place.device.type)
        if not wanted or self.dist.active:  # compiled layers under FSDP2/DDP: not tried yet
            return 0
        layers = decoder_layers(model)
        if not layers:
            self.events.log(f"compile: no decoder layers found, training eager ({why})")
            return 0
        n = min(BUCKET, self.hp.max_seq_len)
        pad = forward.pad_id

        def warm_up() -> None:
            batch = forward.batch([Example([pad] * n, [pad] * n)])
            loss_sum, _, _ = token_sums(forward.logits(model, batch), batch.labels)
            loss_sum.backward()

        error = compile_layers(model, layers, warm_up)
        if error is not None:
            self.events.log(f"compile: failed, training eager ({error})")
            return 0
        self.events.log(
            f"compile: {len(layers)} decoder layers compiled ({why}), "
            f"row lengths padded to multiples of {BUCKET}"
        )
        return BUCKET

    def _sleep(self, seconds: float) -> None:
        # Short naps so a SIGTERM during a long step_delay is noticed within a fraction of a second.
        deadline = time.monotonic() + seconds
        while not self.stop.requested and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, remaining))


def run_training(spec: RunSpec, events: EventWriter, stop: StopFlag) -> int:
    trainer = Trainer(spec, events, stop)
    try:
        code = trainer.run()
        trainer.dist.barrier()  # no rank leaves while rank 0 still writes (torchrun ends the rest)
        return code
    finally:
        trainer.dist.close()
