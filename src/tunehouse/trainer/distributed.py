"""Training on several processes (ranks) of one run: process group, data shares, wrapping, checkpoints.

A run that asks for N GPUs is launched by ``torchrun --nproc-per-node N`` (executors/local.py); each
rank runs the same loop. What differs from one process lives here, so the loop only calls hooks:

* the process group: NCCL on GPUs (rank r on its local GPU r), gloo on CPU ranks;
* each optimizer step's examples are split across the ranks; every rank normalises its loss by the
  step's *global* unit count (target tokens, or pairs) and gradients are *summed* across ranks, so N
  ranks compute the update of one process over the same global batch;
* LoRA: ``DistributedDataParallel`` (with a summing comm hook); full fine-tuning: FSDP2
  ``fully_shard`` on every decoder layer, then on the root, so parameters, gradients and optimizer
  state are sharded;
* the ranks agree on a stop at the end of each step (a SIGTERM to any rank stops them all after the
  same step, with one checkpoint);
* checkpoints: model and optimizer state through ``torch.distributed.checkpoint`` (each rank writes
  its shards; resume needs the same world size), plus the consolidated weights (or adapter) so that
  every checkpoint and the final model load in one process;
* only rank 0 writes events, TensorBoard scalars and the files around a checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .diskspace import written_whole

if TYPE_CHECKING:
    from .store_sync import StoreSync

DCP_DIR = "dcp"  # the sharded model + optimizer state inside a checkpoint of a multi-rank run
# Rank 0's mark in a checkpoint being written: a rank that reads it there shares rank 0's disk.
DISK_MARK = ".rank0-disk"
TIMEOUT = timedelta(minutes=30)  # a collective stuck this long (a hung peer) fails the rank


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    grouped: bool = False  # in a process group (torchrun's ranks; one rank too, when torchrun launched it)

    @property
    def active(self) -> bool:
        return self.grouped

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives -----------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop asked of one rank stops all)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, items: list[Any], indices: list[int]) -> tuple[list[Any], list[int]]:
        """This rank's contiguous share of one step's examples (and their indices)."""
        if not self.active:
            return items, indices
        per = -(-len(items) // self.world)
        lo, hi = self.rank * per, (self.rank + 1) * per
        return items[lo:hi], indices[lo:hi]

    def reduce_result(self, result: Any) -> Any:
        """Sum a StepResult's counts and sums over the ranks (one collective), so metrics, progress and
        token counts describe the global step. ``units`` is already global."""
        if not self.active:
            return result
        device = self._device()
        names = ["loss_sum", "correct", "targets", "real_tokens", "positions"]
        keys = sorted(result.extra)
        values = [getattr(result, n) for n in names] + [result.extra[k] for k in keys]
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64).to(device).reshape(()) for v in values]
        )
        dist.all_reduce(stacked)
        out = stacked.cpu()
        result.loss_sum = stacked[0]
        result.correct = stacked[1]
        result.targets = stacked[2]
        result.real_tokens = int(out[3].item())
        result.positions = int(out[4].item())
        result.extra = {k: stacked[5 + i] for i, k in enumerate(keys)}
        return result

    def close(self) -> None:
        if self.active and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def init() -> Dist:
    """Join the run's process group when torchrun (or Ray Train) started this process; a process started
    plainly is rank 0 of 1, outside any group."""
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _die_with_parent()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # torch.device("cuda") means this rank's GPU from now on
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():  # Ray Train's workers arrive with the group already formed
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, grouped=True)


def _die_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so a launcher killed with SIGKILL would leave
    its ranks running (holding GPU memory): have the kernel kill a rank whose parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os.kill(os.getpid(), signal.SIGKILL)


# ---- wrapping ------------------------------------------------------------------------------------
def _sum_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations, not strings
    # Each rank's loss is already divided by the global unit count: sum, do not average.
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class _DataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP that answers for the wrapped PEFT model (save_pretrained, disable_adapter, ...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: Any, method: str, d: Dist, log: Callable[[str], None]) -> Any:
    """LoRA under DDP; full fine-tuning sharded with FSDP2 (each decoder layer, then the root)."""
    if not d.active:
        return model
    backend = dist.get_backend()
    if method == "full":
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from .regional_compile import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        for module in model.modules():
            if isinstance(module, FSDPModule):  # sum across ranks, as for DDP (plain SUM: gloo has no other)
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        log(
            f"distributed: {d.world} ranks ({backend}), FSDP2 fully_shard on "
            f"{len(decoder_layers(model))} decoder layers and the root; each rank trains its share of a step"
        )
        return model
    ids = [d.local_rank] if torch.cuda.is_available() else None
    wrapped = _DataParallel(model, device_ids=ids)
    wrapped.register_comm_hook(None, _sum_hook)
    log(f"distributed: {d.world} ranks ({backend}), DDP; each rank trains its share of a step")
    return wrapped


def unwrap(model: Any) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def idle_step(model: Any, pad_id: int) -> None:
    """A rank without examples in this step (the last, short batch of an epoch) still joins the
    gradient collectives, with a zero contribution."""
    device = next(unwrap(model).parameters()).device
    ids = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    logits = model(input_ids=ids, use_cache=False).logits
    (logits.float().sum() * 0.0).backward()


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm of sharded (DTensor) gradients as a plain tensor."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm


# ---- checkpoints ---------------------------------------------------------------------------------
def is_distributed_checkpoint(path: Path) -> bool:
    return (path / DCP_DIR / ".metadata").is_file()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _full_state(model: Any) -> dict[str, torch.Tensor]:
    """The consolidated weights (a collective: every rank calls it; rank 0 gets them, on the CPU)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save_pretrained(model: Any, dest: Path) -> None:
    """Write ``model`` as an ordinary Hugging Face directory (rank 0) that one process loads: the
    adapter of a LoRA run, the consolidated full weights of a sharded one. Every rank calls it."""
    inner = unwrap(model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        if dist.get_rank() == 0:
            inner.save_pretrained(dest)  # the adapter is replicated: rank 0's copy is the whole of it
        return
    full = _full_state(model)
    if dist.get_rank() == 0:
        inner.save_pretrained(dest, state_dict=full)


def save_checkpoint(
    dest: Path,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Any,
    metrics: dict[str, float],
    extra: dict[str, Any] | None,
    d: Dist,
    store: StoreSync | None = None,
) -> Path:
    """The multi-rank counterpart of checkpoint.save_checkpoint, written whole the same way: into
    ``step-N.tmp``, renamed by rank 0 once every rank has written its part.

    With a ``store``, rank 0 uploads its folder afterwards (Checkpointer.publish), which holds every
    rank's shards only where the ranks share its disk. A rank that does not (another node) uploads its
    own shards and RNG state to the checkpoint's place in the store before the barrier after which rank
    0 renames and publishes (the state file last), and then removes its scratch copy."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .checkpoint import METRICS_FILE, STATE_FILE

    tmp = dest.with_name(dest.name + ".tmp")
    mark = None
    if d.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if store is not None:
            store.clear(dest)  # before any rank uploads into it: a stale copy must not mix with this one
            mark = uuid.uuid4().hex
            (tmp / DISK_MARK).write_text(mark, encoding="utf-8")
    if store is not None:
        mark = d.broadcast(mark)
    d.barrier()
    own_disk = store is not None and not d.is_main and _read_mark(tmp) != mark
    if own_disk:
        tmp.mkdir(parents=True, exist_ok=True)
        for stale in rank_files(tmp, d.rank):  # an abandoned attempt's, left on this disk
            stale.unlink(missing_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
    torch.save(_rng_state(), tmp / f"rng-{d.rank}.pt")
    save_pretrained(model, tmp)
    if store is not None and own_disk:
        store.publish_rank_files(tmp, dest, rank_files(tmp, d.rank))
    d.barrier()
    if d.is_main:
        (tmp / DISK_MARK).unlink(missing_ok=True)
        with written_whole(tmp, dest):
            tokenizer.save_pretrained(tmp)
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(_rng_state(), tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            for name, value in (extra or {}).items():
                torch.save(value, tmp / name)
            if dest.exists():
                shutil.rmtree(dest)  # a stale checkpoint of the same step from an abandoned attempt
            os.rename(tmp, dest)
    d.barrier()
    if own_disk:
        # Every rank of a node of its own removes the folder; they all passed the barrier, so none still
        # writes into it.
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def rank_files(folder: Path, rank: int) -> list[Path]:
    """The files of a checkpoint folder that rank ``rank`` alone writes: its DCP shards, its RNG state."""
    return [*sorted((folder / DCP_DIR).glob(f"__{rank}_*.distcp")), folder / f"rng-{rank}.pt"]


def _read_mark(folder: Path) -> str | None:
    try:
        return (folder / DISK_MARK).read_text(encoding="utf-8")
    except OSError:
        return None


def load_checkpoint(ckpt: Path, model: Any, optimizer: torch.optim.Optimizer, d: Dist) -> None:
    """Restore this rank's model and optimizer shards from the checkpoint's DCP state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=str(ckpt / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])


def restore_rng(ckpt: Path, d: Dist) -> None:
    state = torch.load(ckpt / f"rng-{d.rank}.pt", weights_only=False)
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_world(state: Any, ckpt: Path, d: Dist) -> None:
    taken = getattr(state, "world_size", 1) or 1
    if taken != d.world:
        raise RuntimeError(
            f"resume_from {ckpt} was taken on {taken} rank(s) and this run has {d.world}; an exact "
            "resume needs the same number of GPUs"
        )


def step(d: Dist, objective: Any, model: Any, items: list[Any], indices: list[int], micro: int) -> Any:
    """One rank's part of an optimizer step over ``items``: its share, normalised by the whole step's
    units; the returned StepResult is summed over the ranks."""
    from .objectives import StepResult

    units = objective.step_units(items)
    mine, mine_indices = d.shard(items, indices)
    if mine:
        result = objective.step(model, mine, mine_indices, micro, units=units)
    else:
        idle_step(model, objective.forward.pad_id)
        result = StepResult(units=units)
    return d.reduce_result(result)


class NoScalars:
    """TensorBoard scalars of a rank other than 0: rank 0 writes them."""

    def add_scalars(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
        pass

    def close(self) -> None:
        pass


def save_model(save: Any, spec: Any, model: Any, tokenizer: Any, trained_tokens: int, d: Dist) -> Any:
    """modeling.save_model (``save``) on rank 0 with the consolidated model; every rank calls this.
    Returns rank 0's payload (None elsewhere)."""
    payload = None
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        if d.is_main:
            payload = save(spec, model.module, tokenizer, trained_tokens)
    else:
        full = _full_state(model)
        if d.is_main:
            payload = save(spec, _Consolidated(model, full), tokenizer, trained_tokens)
    d.barrier()
    return payload


class _Consolidated:
    """A sharded model seen by save_model: save_pretrained writes the gathered weights."""

    def __init__(self, model: Any, state: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.state = state

    def save_pretrained(self, dest: Path) -> None:
        self.model.save_pretrained(dest, state_dict=self.state)
