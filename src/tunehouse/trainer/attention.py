"""Which attention implementation a model trains with, and how packing must be laid out under it.

The choice follows what the model class declares (``_supports_flash_attn``, ``_supports_sdpa``) and what
the machine has: flash attention on CUDA when a flash package (or the ``kernels`` hub fallback) is
installed, else varlen SDPA (varlen_sdpa.py: SDPA per packed example, or torch's varlen kernel on
CUDA, with no mask) where the model takes a registered attention function, else SDPA, else eager.
Gemma-2 is the usual eager case: transformers marks it ``_supports_sdpa = False`` because SDPA cannot
softcap attention logits, and flash is only taken for such a model when the installed kernel accepts
``softcap``.

Flash implementations take no attention mask. transformers keeps packed examples apart under them only
through ``cu_seq_lens``, which it derives from position ids for a batch of exactly one row
(``_is_packed_sequence``), so a varlen implementation needs one packed row per micro-batch. SDPA, eager
and flex get a block-diagonal mask from multi-row position ids (``find_packed_sequence_indices``).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import varlen_sdpa

ENV_OVERRIDE = "TUNEHOUSE_ATTN_IMPLEMENTATION"


@dataclass(frozen=True)
class AttentionChoice:
    implementation: str | None  # None: transformers' own default (SDPA where supported, else eager)
    reason: str


def is_varlen(implementation: str) -> bool:
    """Whether packed examples are separated by sequence lengths rather than by a mask: a flash
    implementation by name (hub kernels included), or any that transformers gives flash's mask
    function, which builds no mask."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    from transformers.utils.generic import is_flash_attention_requested

    varlen_sdpa.register()
    mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(implementation)
    return mask is flash_attention_mask or is_flash_attention_requested(
        requested_attention_implementation=implementation
    )


def _model_class(source: Path) -> tuple[Any, Any]:
    """(the causal-LM class transformers would build for the model at ``source`` or None, its config)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    return AutoModelForCausalLM._model_mapping.get(type(config), None), config


def _flash_candidates() -> list[str]:
    """Installed flash implementations usable on this CUDA device, best first."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_kernels_available

    major, _ = torch.cuda.get_device_capability()
    found = []
    if major >= 9 and is_flash_attn_3_available():  # FA3 kernels are built for Hopper and newer
        found.append("flash_attention_3")
    if major >= 8 and is_flash_attn_2_available():
        found.append("flash_attention_2")
    # Requesting flash_attention_2 without the package makes transformers use the hub kernel.
    hub = not found and major >= 8 and is_kernels_available()
    if hub and is_flash_attn_2_available(kernels_fallback_ok=True):
        found.append("flash_attention_2")
    return found


def _accepts_softcap(implementation: str) -> bool:
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

    try:
        (_, varlen_fn, *_), _ = lazy_import_flash_attention(implementation)
    except Exception:  # noqa: BLE001 - a kernel that cannot be loaded is not a candidate
        return False
    return varlen_fn is not None and "softcap" in inspect.signature(varlen_fn).parameters


def choose_attention(source: Path, device_type: str, half_precision: bool) -> AttentionChoice:
    """The best implementation for the model at ``source``; ``half_precision``: the attention runs in
    bf16/fp16 (weights or autocast), which flash kernels require."""
    varlen_sdpa.register()  # so that transformers can load a model with it, whatever is chosen
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        return AttentionChoice(override, f"set by {ENV_OVERRIDE}")
    cls, config = _model_class(source)
    if cls is None:  # not a causal LM transformers knows: loading will say so
        return AttentionChoice(None, "transformers' default")
    name = cls.__name__
    if cls._supports_flash_attn and device_type == "cuda" and half_precision:
        candidates = _flash_candidates()
        # Models that need particular kernels (attention sinks, sparse attention) list them; transformers
        # would swap any other flash request for the first of those, a hub download.
        compatible = cls._compatible_flash_implementations
        if compatible is not None:
            candidates = [c for c in candidates if c in compatible]
        softcap = getattr(config, "attn_logit_softcapping", None) is not None
        for implementation in candidates:
            if not softcap or _accepts_softcap(implementation):
                return AttentionChoice(implementation, f"{name} supports flash attention and it is installed")
    if cls._supports_sdpa and varlen_sdpa_fits(cls, config):
        return AttentionChoice(
            varlen_sdpa.NAME, f"{name} supports sdpa and registered attention functions; no flash kernel"
        )
    if cls._supports_sdpa:
        return AttentionChoice("sdpa", f"{name} supports sdpa")
    return AttentionChoice("eager", f"{name} does not support sdpa")


def varlen_sdpa_fits(cls: Any, config: Any) -> bool:
    """Whether varlen_sdpa.py computes this model's attention exactly: the model calls registered
    attention functions, and needs neither softcapping nor attention sinks (whose models name the
    kernels they take)."""
    config = getattr(config, "text_config", None) or config
    return (
        bool(getattr(cls, "_supports_attention_backend", False))
        and getattr(config, "attn_logit_softcapping", None) is None
        and getattr(cls, "_compatible_flash_implementations", None) is None
    )
