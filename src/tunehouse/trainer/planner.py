"""Memory planning on CUDA: how many tokens a micro-batch may hold, from free memory and the model's
shape, and whether activation checkpointing is needed to fit even one sequence.

What is counted, per trainable parameter, the training state (``Precision.state_bytes``: weight,
gradient, optimizer moments, less the weight already loaded); per token, the activations autograd
keeps: each decoder layer's inputs and intermediates in bf16 (about ``6h + 4i`` values a layer,
``h`` hidden and ``i`` MLP width) or, checkpointed, only each layer's input plus one layer
recomputed at a time; and the LM head's logits (bf16 out, the fp32 copy the loss makes, its
gradient). A tenth of free memory is held back for the allocator's fragmentation and the kernels'
workspaces. The estimate is deliberately simple; an out-of-memory retry (memory.py) still backs it.
On CPU nothing is planned: the micro-batch is the one configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

RESERVE = 0.10  # of free memory, never planned for
ACTIVATION_BYTES = 2  # bf16
LOGIT_BYTES = 2 + 4 + 4  # bf16 logits, their fp32 copy in the loss, its gradient


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    trainable: int  # trainable parameters
    loaded_bytes: int  # what the trainable weights already take on the device

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        config = model.config
        config = getattr(config, "text_config", None) or config
        params = [p for p in model.parameters() if p.requires_grad]
        hidden = config.hidden_size
        return cls(
            layers=config.num_hidden_layers,
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
            vocab=config.vocab_size,
            trainable=sum(p.numel() for p in params),
            loaded_bytes=sum(p.numel() * p.element_size() for p in params),
        )


def token_bytes(shape: ModelShape, checkpointing: bool) -> int:
    """Activation bytes one token of a micro-batch keeps until the backward pass."""
    layer = (6 * shape.hidden + 4 * shape.intermediate) * ACTIVATION_BYTES
    # Checkpointed, each layer's input is kept and one layer's intermediates exist at a time.
    kept = shape.layers * shape.hidden * ACTIVATION_BYTES + layer if checkpointing else shape.layers * layer
    return kept + shape.vocab * LOGIT_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    micro: int  # examples per micro-batch
    checkpointing: bool
    token_budget: int  # tokens per micro-batch the memory allows (0 when not planned)
    line: str  # for the run's log


def plan_memory(
    shape: ModelShape,
    free_bytes: int,
    state_bytes: int,
    max_seq_len: int,
    micro: int,
    per_step: int,
    checkpointing: bool,
) -> MemoryPlan:
    """The micro-batch (at most the step's ``per_step`` examples, each up to ``max_seq_len`` tokens)
    that fits in ``free_bytes``; checkpointing is turned on when not even one sequence fits without."""
    state = max(0, shape.trainable * state_bytes - shape.loaded_bytes)
    usable = int(free_bytes * (1 - RESERVE)) - state
    budget = max(0, usable) // token_bytes(shape, checkpointing)
    if budget < max_seq_len and not checkpointing:
        with_checkpointing = max(0, usable) // token_bytes(shape, True)
        if with_checkpointing >= max_seq_len:
            checkpointing, budget = True, with_checkpointing
    planned = max(1, min(per_step, budget // max_seq_len))
    gib = 2**30
    line = (
        f"memory plan: {free_bytes / gib:.1f} GiB free, {state / gib:.1f} GiB for training state, "
        f"{budget:,} tokens per micro-batch, so micro-batch {planned} of up to {max_seq_len} tokens "
        f"(was {micro}), activation checkpointing {'on' if checkpointing else 'off'}"
    )
    if budget < max_seq_len:
        line += "; even one sequence may not fit, the out-of-memory retry has the last word"
    return MemoryPlan(planned, checkpointing, budget, line)


def not_planned(device_type: str, micro: int, checkpointing: bool) -> MemoryPlan:
    line = f"memory plan: not needed on {device_type}, micro-batch {micro} as configured"
    return MemoryPlan(micro, checkpointing, 0, line)


def plan_for(
    model: Any,
    device: torch.device,
    state_bytes: int,
    max_seq_len: int,
    micro: int,
    per_step: int,
    checkpointing: bool,
) -> MemoryPlan:
    """The plan for ``model`` as loaded on ``device``, before the optimizer allocates its state."""
    if device.type != "cuda":
        return not_planned(device.type, micro, checkpointing)
    free, _ = torch.cuda.mem_get_info(device)
    shape = ModelShape.of(model)
    return plan_memory(shape, free, state_bytes, max_seq_len, micro, per_step, checkpointing)
