"""Regional ``torch.compile``: each decoder layer compiled on its own, not the whole model.

The layers of a model share one code path, so compiling them one by one gives one graph reused by
every layer (parameters are graph inputs), a fraction of a whole-model compile's warm-up, and no
graph breaks from the model's Python around them (masks, caches, the loss). Shapes are dynamic, and
the packed length is bucketed to a multiple of ``BUCKET`` (batching.py pads it) so the graphs see a
bounded set of sizes. Before training, a warm-up forward and backward through the compiled layers
proves they build; on any error the layers go back to eager and the run's log says why.

On by default on CUDA only. On CPU (measured 2026-12-01 on the throughput bench's Qwen2 shape, chat
data, one thread, 2 shared AVX2 cores) inductor's layers train 7-18% more tokens per CPU-second once
built, but the build takes ~31 CPU-s in the process plus the C++ compiles in worker processes (3.5
minutes wall on the loaded machine): a loss for the short runs CPU training is used for, and for a
test suite that starts many of them. ``TUNEHOUSE_COMPILE=1`` or ``=0`` overrides the choice.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import torch

ENV = "TUNEHOUSE_COMPILE"
BUCKET = 128  # tokens; a packed row's length is padded up to a multiple of this when compiling


def compile_wanted(device_type: str) -> tuple[bool, str]:
    """(compile or not, why)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True, f"{ENV}={value}"
    if value in ("0", "false", "no", "off"):
        return False, f"{ENV}={value}"
    return device_type == "cuda", f"the default on {device_type}"


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder layers: the module list whose members transformers checkpoints per layer."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module) > 0
            and all(isinstance(m, GradientCheckpointingLayer) for m in module)
        ):
            return list(module)
    return []


def _set_eager(layers: list[torch.nn.Module]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)  # drop the compiled instance attribute; the class's remains


def compile_layers(
    model: Any, layers: list[torch.nn.Module], warm_up: Callable[[], None], backend: str = "inductor"
) -> str | None:
    """Compile each of ``layers`` in place and run ``warm_up`` (a forward and backward) through the
    model; returns None on success, else the error, with the layers back to eager."""
    # The warm-up must not shift the run's random draws.
    rng = torch.random.get_rng_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        for layer in layers:
            layer.forward = torch.compile(layer.forward, dynamic=True, backend=backend)
        warm_up()
        return None
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
        _set_eager(layers)
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"  # one line for the log
    finally:
        torch.random.set_rng_state(rng[0])
        random.setstate(rng[1])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        model.zero_grad(set_to_none=True)
