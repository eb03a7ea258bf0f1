"""Numeric precision: the dtype the weights live in, autocast, and how the optimizer updates them.

The scheme, by device and method:

- CPU, or a GPU without bf16: fp32 weights, gradients and AdamW state.
- LoRA on a bf16 GPU: the frozen base in bf16, the adapter in fp32 (PEFT keeps it so), bf16 autocast.
- Full fine-tuning on a bf16 GPU: bf16 weights and gradients, AdamW moments in fp32 (``Bf16AdamW``).
  Each update is computed in fp32 from the fp32 moments and written into the bf16 weight with
  stochastic rounding, so an update smaller than half a bf16 step survives in expectation instead of
  rounding away (with plain rounding, lr 1e-5 on weights of size 0.02 would never move them). That is
  12 bytes per parameter (2 weight, 2 gradient, 8 moments) where fp32 master weights under autocast
  take 16: an 8B model's training state is ~96 GB and fits one 141 GB GPU. bf16 autocast still runs
  around the forward so softmax, norms and the loss keep their fp32 paths.
  With ``TUNEHOUSE_ADAMW_8BIT=1`` and bitsandbytes importable, bitsandbytes' 8-bit AdamW holds the
  moments in 2 bytes per parameter instead (6 bytes per parameter in all).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

ENV_8BIT = "TUNEHOUSE_ADAMW_8BIT"


@dataclass(frozen=True)
class Precision:
    load_dtype: torch.dtype  # the weights' dtype as loaded
    autocast: bool  # bf16 autocast around forward passes
    state_bytes: int  # bytes per trainable parameter: weight, gradient and optimizer state


def choose_precision(device_type: str, bf16_supported: bool, method: str) -> Precision:
    if device_type != "cuda" or not bf16_supported:
        return Precision(torch.float32, False, 16)
    if method == "lora":
        return Precision(torch.bfloat16, True, 16)  # of the (fp32) adapter; the base is 2 bytes
    return Precision(torch.bfloat16, True, 12)


def stochastic_round_(target: torch.Tensor, value: torch.Tensor) -> None:
    """Write fp32 ``value`` into bf16 ``target``, rounding up with probability equal to the
    fraction cut off, so the rounding is unbiased."""
    bits = value.view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, device=bits.device, dtype=torch.int32)
    # bf16 is the top half of an fp32: adding noise below it and truncating rounds stochastically.
    target.copy_(((bits + noise) & -65536).view(torch.float32))


class Bf16AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected) for bf16 parameters with fp32 moments and
    stochastically rounded updates; fp32 parameters get the same update without the rounding."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                grad = p.grad.float()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                denom = (exp_avg_sq.sqrt() / math.sqrt(correction2)).add_(eps)
                weight = p.float() if p.dtype != torch.float32 else p
                weight.mul_(1 - lr * decay).addcdiv_(exp_avg, denom, value=-lr / correction1)
                if weight is not p:
                    stochastic_round_(p, weight)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts loaded state to each parameter's dtype; the moments must stay fp32.
        super().load_state_dict(state_dict)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for index, p in zip(saved, params, strict=True):
            for key, value in state_dict["state"].get(index, {}).items():
                if isinstance(value, torch.Tensor) and key != "step":
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32)


def adamw_8bit() -> type[torch.optim.Optimizer] | None:
    """bitsandbytes' 8-bit AdamW when asked for (``TUNEHOUSE_ADAMW_8BIT=1``) and importable."""
    if os.environ.get(ENV_8BIT, "").strip() not in ("1", "true", "yes"):
        return None
    try:
        import bitsandbytes as bnb  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure (no package, no CUDA build) means no 8-bit
        return None
    return bnb.optim.AdamW8bit
