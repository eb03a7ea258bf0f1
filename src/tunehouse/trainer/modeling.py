"""The model: where and in what precision it runs, loading it (base, init_from, resume, LoRA), and
saving the trained result."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunehouse.contract.spec import RunSpec

from .attention import choose_attention, is_varlen
from .diskspace import written_whole
from .precision import choose_precision


@dataclass(frozen=True)
class Placement:
    device: torch.device
    load_dtype: torch.dtype
    autocast: bool  # bf16 autocast around forward passes
    state_bytes: int  # per trainable parameter: weight, gradient, optimizer state


def choose_placement(spec: RunSpec) -> Placement:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = choose_precision(device.type, bf16, spec.method)  # the scheme: see precision.py
    return Placement(device, precision.load_dtype, precision.autocast, precision.state_bytes)


def base_path(spec: RunSpec) -> Path:
    """The weights training starts from: init_from's full weights, else the model."""
    init = spec.init_from
    full_init = init is not None and init.kind == "full"
    return (init.path if full_init else spec.model_path).resolve()


def check_init(spec: RunSpec) -> None:
    init = spec.init_from
    if init is None:
        return
    marker = "adapter_config.json" if init.kind == "lora_adapter" else "config.json"
    if not (init.path / marker).is_file():
        raise RuntimeError(f"init_from {init.path} is not a {init.kind} directory (no {marker})")


def tokenizer_source(spec: RunSpec) -> Path:
    init = spec.init_from
    if init is not None and init.kind == "full" and (init.path / "tokenizer_config.json").is_file():
        return init.path
    return spec.model_path


def load_model(
    spec: RunSpec, place: Placement, resume: Path | None, log: Callable[[str], None]
) -> tuple[Any, bool]:
    """(model on its device, varlen): varlen when its attention wants one row per packed micro-batch."""
    from transformers import AutoModelForCausalLM

    hp, init = spec.hyperparameters, spec.init_from
    source = resume if resume is not None and spec.method == "full" else base_path(spec)
    half = place.autocast or place.load_dtype in (torch.float16, torch.bfloat16)
    choice = choose_attention(source, place.device.type, half_precision=half)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=place.load_dtype, attn_implementation=choice.implementation
    )
    attn = model.config._attn_implementation  # what transformers settled on, hub kernels resolved
    # Flash separates packed examples only within a single row: pack each micro-batch into one.
    varlen = is_varlen(attn)
    model.config.use_cache = False
    adapter_init = init is not None and init.kind == "lora_adapter" and resume is None
    if spec.method == "full" and adapter_init:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init.path).merge_and_unload()
        model.requires_grad_(True)  # PEFT froze the base while the adapter was attached
        log(f"init_from: merged the adapter {init.path} into the base for full training")
    if spec.method == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume is not None:
            model = PeftModel.from_pretrained(model, resume, is_trainable=True)
        elif adapter_init:
            model = PeftModel.from_pretrained(model, init.path, is_trainable=True)
            log(f"init_from: continuing to train the adapter {init.path}")
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
        log(f"init_from: starting from the full weights in {init.path}")
    if hp.gradient_checkpointing:
        enable_checkpointing(model)
    model.to(place.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    dtype = str(place.load_dtype).removeprefix("torch.")
    layout = "one varlen row per micro-batch" if varlen else "rows with a block mask"
    log(
        f"model: {spec.train_mode} {spec.method} on {place.device.type}, weights {dtype}"
        f"{', bf16 autocast' if place.autocast else ''}, attention {attn} ({choice.reason}), "
        f"packing {layout if spec.packing else 'off'}, "
        f"{trainable:,} of {total:,} parameters trainable"
    )
    return model, varlen


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing per decoder layer: transformers wraps each layer, so only the layers'
    inputs are kept and a layer's activations are recomputed during its backward."""
    # Non-reentrant checkpointing needs no input grads, so it works under frozen LoRA bases too.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's new name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def save_model(spec: RunSpec, model: Any, tokenizer: Any, trained_tokens: int) -> dict[str, Any]:
    """Write the trained model (and, if asked, the merged one); returns the "model" event's payload."""
    lora = spec.method == "lora"
    final = _save_atomically(spec.model_dir.resolve(), model, tokenizer)
    payload: dict[str, Any] = {
        "path": str(final),
        "kind": "lora_adapter" if lora else "full",
        # For an adapter: the weights it must be loaded onto.
        "base_model_path": str(base_path(spec) if lora else spec.model_path.resolve()),
        "trained_tokens": trained_tokens,
    }
    if lora and spec.hyperparameters.merge_adapter:
        merged = model.merge_and_unload()
        payload["merged_path"] = str(_save_atomically(spec.merged_dir.resolve(), merged, tokenizer))
    return payload


def _save_atomically(final: Path, model: Any, tokenizer: Any) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with written_whole(tmp, final):  # a full disk leaves no half-written model behind, and says so
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    return final
