"""Attention implementation choice, and packing that keeps examples apart under each implementation.

Flash attention needs CUDA, so packing under it is checked with a stand-in: exact CPU kernels with
flash-attn's signatures, plugged in under transformers' own flash code (``flash_attention_forward``,
``_flash_attention_forward`` and the flash mask function all run unchanged). transformers thus makes
exactly the decisions it makes for real flash attention (no mask; varlen only given ``cu_seq_lens`` or
a one-row packed batch; padded batches unpadded), and only the kernels differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers.modeling_flash_attention_utils as fa_utils
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, GptOssConfig
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from tunehouse.contract.spec import EXIT_SUCCEEDED
from tunehouse.trainer import attention, varlen_sdpa
from tunehouse.trainer.attention import ENV_OVERRIDE, choose_attention, is_varlen
from tunehouse.trainer.batching import Batch, collate, collate_packed, collate_varlen
from tunehouse.trainer.loop import token_loss
from tunehouse.trainer.tokenization import IGNORE_INDEX, Example

from ...families import build_family_model
from .conftest import chat_rows, of_type, run_in_process, write_jsonl

STANDIN = "tunehouse_flash_standin"  # "flash" in the name: transformers treats it as a flash implementation


# -- the stand-in ------------------------------------------------------------------------------------


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    softmax_scale: float | None,
    causal: bool,
    window_size: tuple[int, int],
    softcap: float,
    dropout_p: float,
) -> torch.Tensor:
    """One sequence, flash-attn semantics: q (Sq, H, D), k/v (Sk, Hkv, D); causal aligned bottom-right."""
    sq, heads, dim = q.shape
    sk = k.shape[0]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * (softmax_scale or 1 / math.sqrt(dim))
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    left, right = window_size
    if causal:
        right = 0
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.einsum("hqk,khd->qhd", probs, v)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
) -> torch.Tensor:
    """Dense: every row of (B, S, H, D) is one sequence."""
    args = (softmax_scale, causal, window_size, softcap, dropout_p)
    return torch.stack([_attend(q[b], k[b], v[b], *args) for b in range(q.shape[0])])


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
) -> torch.Tensor:
    """Flattened (total, H, D) sequences delimited by the cumulative lengths."""
    args = (softmax_scale, causal, window_size, softcap, dropout_p)
    out = torch.empty_like(q)
    for s in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = (
            int(cu_seqlens_q[s]),
            int(cu_seqlens_q[s + 1]),
            int(cu_seqlens_k[s]),
            int(cu_seqlens_k[s + 1]),
        )
        out[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], *args)
    return out


def _install_kernels() -> None:
    # transformers looks its flash kernels up by implementation name and caches them in these module
    # globals; pre-loading ours there is what makes its flash path run on CPU, unchanged.
    if fa_utils._loaded_implementation != STANDIN:
        fa_utils._flash_fn, fa_utils._flash_varlen_fn = flash_attn_func, flash_attn_varlen_func
        fa_utils._flash_with_kvcache_fn = None
        fa_utils._pad_fn, fa_utils._unpad_fn = fa_utils._pad_input, fa_utils._unpad_input
        fa_utils._process_flash_kwargs_fn = fa_utils._lazy_define_process_function(flash_attn_varlen_func)
        fa_utils._process_with_kvcache_kwargs_fn = dict
        fa_utils._loaded_implementation = STANDIN


def standin_attention(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    _install_kernels()  # again, in case a real flash implementation was loaded since
    return flash_attention_forward(module, *args, **kwargs)


_KERNEL_GLOBALS = (
    "_loaded_implementation",
    "_flash_fn",
    "_flash_varlen_fn",
    "_flash_with_kvcache_fn",
    "_pad_fn",
    "_unpad_fn",
    "_process_flash_kwargs_fn",
    "_process_with_kvcache_kwargs_fn",
)


@pytest.fixture
def flash_standin() -> Iterator[str]:
    saved = {name: getattr(fa_utils, name) for name in _KERNEL_GLOBALS}
    AttentionInterface.register(STANDIN, standin_attention)
    AttentionMaskInterface.register(STANDIN, flash_attention_mask)
    _install_kernels()
    yield STANDIN
    for name, value in saved.items():  # later tests load whatever flash kernels they ask for
        setattr(fa_utils, name, value)


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_dirs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A tiny model directory by key: "tiny" (Qwen2) or a family of tests/families.py."""
    root = tmp_path_factory.mktemp("families")
    return lambda key: tiny_model if key == "tiny" else build_family_model(key, root / key)


def examples_of(tokenizer: Any) -> list[Example]:
    """Five distinct examples of different lengths, the first tokens of each untrained like a prompt."""
    texts = [" ".join(["word"] * (3 + 4 * i)) + " end." for i in range(3)]
    texts += ["Say hello. Hello there!", "Name a fruit. An apple, or a pear."]
    examples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        examples.append(Example(ids, [IGNORE_INDEX] * 2 + ids[2:]))
    return examples


def pad_id(tokenizer: Any) -> int:
    # As the trainer does: padding is masked out, so EOS serves where a family has no pad token.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load(model_dir: Path, attn: str) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn).eval()


def segments(batch: Batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sequence in the batch: padded rows by their mask, packed rows by
    where the position ids restart."""
    if batch.position_ids is None:
        assert batch.attention_mask is not None
        return [(row, 0, int(mask.sum())) for row, mask in enumerate(batch.attention_mask)]
    found = []
    for row, positions in enumerate(batch.position_ids):
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        found += [(row, a, b) for a, b in zip(starts, starts[1:], strict=False)]
    return found


def per_example_logits(model: Any, batch: Batch, examples: list[Example]) -> list[torch.Tensor]:
    """Each example's logits, wherever the layout put it."""
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    by_ids = {tuple(batch.input_ids[r, a:b].tolist()): logits[r, a:b] for r, a, b in segments(batch)}
    return [by_ids[tuple(e.input_ids)] for e in examples]


def max_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def batch_loss(model: Any, batch: Batch) -> float:
    with torch.no_grad():
        loss_sum, n, _ = token_loss(model(**batch.model_inputs()).logits, batch.labels)
    return float(loss_sum) / n


# -- choice -------------------------------------------------------------------------------------------


def test_attention_follows_what_the_model_class_declares(
    model_dirs: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_model = model_dirs("tiny")
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    qwen2 = choose_attention(tiny_model, "cpu", half_precision=False)
    assert qwen2.implementation == varlen_sdpa.NAME and "Qwen2ForCausalLM" in qwen2.reason
    # Gemma-2 softcaps attention logits, which SDPA cannot: transformers declares it unsupported.
    gemma2 = choose_attention(model_dirs("gemma2"), "cpu", half_precision=False)
    assert gemma2.implementation == "eager" and "does not support sdpa" in gemma2.reason
    # Flash kernels are CUDA-only: a CPU run never picks them, however the model is declared.
    assert choose_attention(tiny_model, "cpu", half_precision=True).implementation == varlen_sdpa.NAME
    monkeypatch.setenv(ENV_OVERRIDE, "eager")
    assert choose_attention(tiny_model, "cpu", half_precision=False).implementation == "eager"


def test_flash_is_chosen_on_cuda_where_the_model_can_use_it(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine has no GPU: the probe of installed kernels stands in for a CUDA machine with flash-attn 2.
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(attention, "_flash_candidates", lambda: ["flash_attention_2"])
    assert choose_attention(tiny_model, "cuda", half_precision=True).implementation == "flash_attention_2"
    # Flash kernels compute in bf16/fp16 only; fp32 training without autocast gets varlen SDPA.
    assert choose_attention(tiny_model, "cuda", half_precision=False).implementation == varlen_sdpa.NAME
    # Without a flash kernel installed, a bf16 run gets it too (torch's varlen kernel on CUDA).
    monkeypatch.setattr(attention, "_flash_candidates", lambda: [])
    assert choose_attention(tiny_model, "cuda", half_precision=True).implementation == varlen_sdpa.NAME
    # gpt-oss's attention sinks need one of the kernels it lists, which flash-attn 2 is not.
    GptOssConfig(num_hidden_layers=2, num_local_experts=4, hidden_size=32).save_pretrained(
        tmp_path / "gpt_oss"
    )
    assert choose_attention(tmp_path / "gpt_oss", "cuda", half_precision=True).implementation == "eager"


def test_flash_implementations_are_varlen_and_masked_ones_are_not(flash_standin: str) -> None:
    assert (
        is_varlen("flash_attention_2") and is_varlen("kernels-community/flash-attn2") and is_varlen(STANDIN)
    )
    assert not any(is_varlen(name) for name in ("sdpa", "eager", "flex_attention"))
    assert is_varlen(varlen_sdpa.NAME)  # packed into one row with cu_seq_lens, like flash


# -- packing under each implementation ----------------------------------------------------------------


@pytest.mark.parametrize(("key", "attn"), [("tiny", "sdpa"), ("tiny", "eager"), ("gemma2", "eager")])
def test_masked_implementations_keep_multi_row_packs_apart(
    model_dirs: Callable[[str], Path], key: str, attn: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dirs(key))
    model, examples = load(model_dirs(key), attn), examples_of(tokenizer)
    padded = collate(examples, pad_id(tokenizer))
    packed = collate_packed(examples, 40, pad_id(tokenizer))
    assert 1 < packed.input_ids.shape[0] < len(examples)  # several rows, several examples in some
    error = max_error(
        per_example_logits(model, packed, examples), per_example_logits(model, padded, examples)
    )
    assert error < 1e-4
    assert batch_loss(model, packed) == pytest.approx(batch_loss(model, padded), rel=1e-5)


def test_flash_sees_across_examples_in_a_multi_row_pack(tiny_model: Path, flash_standin: str) -> None:
    # transformers only treats a one-row batch as packed under flash attention; with several rows it
    # runs dense causal attention, so an example reads the one before it in its row.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model, examples = load(tiny_model, flash_standin), examples_of(tokenizer)
    padded = collate(examples, pad_id(tokenizer))
    multi_row = collate_packed(examples, 40, pad_id(tokenizer))
    assert multi_row.input_ids.shape[0] > 1
    assert (
        max_error(per_example_logits(model, multi_row, examples), per_example_logits(model, padded, examples))
        > 0.05
    )


@pytest.mark.parametrize("key", ["tiny", "llama3_1", "gemma2"])
def test_flash_one_varlen_row_equals_unpacked(
    model_dirs: Callable[[str], Path], key: str, flash_standin: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dirs(key))
    model, examples = load(model_dirs(key), flash_standin), examples_of(tokenizer)
    padded = collate(examples, pad_id(tokenizer))  # padded rows take flash's unpadding path
    varlen = collate_varlen(examples)
    assert (
        varlen.input_ids.shape == (1, sum(len(e.input_ids) for e in examples))
        and varlen.positions == varlen.tokens
    )
    error = max_error(
        per_example_logits(model, varlen, examples), per_example_logits(model, padded, examples)
    )
    assert error < 1e-4
    assert batch_loss(model, varlen) == pytest.approx(batch_loss(model, padded), rel=1e-5)
    # The same boundaries come from the position ids alone, as transformers derives them without cu_seq_lens.
    bare = Batch(varlen.input_ids, varlen.labels, position_ids=varlen.position_ids)
    assert (
        max_error(per_example_logits(model, bare, examples), per_example_logits(model, varlen, examples))
        < 1e-5
    )


# -- through the trainer ------------------------------------------------------------------------------


def train_losses(events: list[dict[str, Any]]) -> list[float]:
    return [p["train_loss"] for p in of_type(events, "metrics") if "train_loss" in p]


def model_log(events: list[dict[str, Any]]) -> str:
    return next(m["message"] for m in of_type(events, "log") if m["message"].startswith("model: "))


def test_trainer_packs_one_varlen_row_under_flash(
    make_spec: Callable[..., Path], tmp_path: Path, flash_standin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_OVERRIDE, flash_standin)
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(repeats=3))
    # Four examples of about 22 tokens do not fit one 48-token row: the masked layout needs two rows.
    hp = {
        "epochs": 2,
        "batch_size": 4,
        "max_seq_len": 48,
        "split_ratio": 34,
        "eval_steps": 1,
        "lora_dropout": 0,
    }
    runs = {}
    for packing in (True, False):
        spec = make_spec(f"flash-{packing}", train_files=[str(data)], hp={**hp, "packing": packing})
        code, events = run_in_process(spec)
        assert code == EXIT_SUCCEEDED, of_type(events, "error")
        runs[packing] = events
    assert train_losses(runs[True]) == pytest.approx(train_losses(runs[False]), rel=1e-4)
    evals = [[p["eval_loss"] for p in of_type(runs[k], "metrics") if "eval_loss" in p] for k in (True, False)]
    assert evals[0] == pytest.approx(evals[1], rel=1e-4)
    assert f"attention {flash_standin} (set by {ENV_OVERRIDE})" in model_log(runs[True])
    assert "packing one varlen row per micro-batch" in model_log(runs[True])
    assert of_type(runs[True], "progress")[-1]["padding_share"] == 0  # one row: nothing to pad


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gemma2_trains_with_eager_attention_packed_as_unpacked(
    make_spec: Callable[..., Path],
    model_dirs: Callable[[str], Path],
    tmp_path: Path,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(repeats=2))
    hp = {"epochs": 2, "learning_rate": 1e-3, "batch_size": 4, "lora_dropout": 0}
    losses = {}
    for packing in (True, False):
        spec = make_spec(
            f"gemma2-{method}-{packing}",
            model_path=str(model_dirs("gemma2")),
            method=method,
            train_files=[str(data)],
            hp={**hp, "packing": packing},
        )
        code, events = run_in_process(spec)
        assert code == EXIT_SUCCEEDED, of_type(events, "error")
        assert "attention eager (Gemma2ForCausalLM does not support sdpa)" in model_log(events)
        losses[packing] = train_losses(events)
    assert len(losses[True]) == 4 and all(math.isfinite(x) for x in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


# -- varlen SDPA (no flash kernel) --------------------------------------------------------------------


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Plain softmax attention under an explicit (T, T) mask: (B, H, T, D), (B, Hkv, T, D) in,
    (B, T, H, D) out, queries with nothing to attend to giving zeros."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    return (probs @ v).transpose(1, 2)


def block_causal(bounds: list[int], window: int | None = None) -> torch.Tensor:
    n = bounds[-1]
    doc = torch.zeros(n, dtype=torch.long)
    for d, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        doc[a:b] = d
    i = torch.arange(n)
    allowed = (doc[:, None] == doc[None, :]) & (i[None, :] <= i[:, None])
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    return allowed


def qkv(batch: int, length: int, heads: int = 4, kv_heads: int = 2, dim: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(batch, heads, length, dim), (batch, kv_heads, length, dim), (batch, kv_heads, length, dim)]
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def grads_of(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return list(torch.autograd.grad((out * weights).sum(), inputs))


@pytest.mark.parametrize("window", [None, 3])
def test_varlen_sdpa_keeps_packed_examples_apart_with_their_gradients(window: int | None) -> None:
    bounds = [0, 5, 6, 13, 20]
    q, k, v = qkv(1, bounds[-1])
    module = torch.nn.Module().eval()
    out, _ = varlen_sdpa.varlen_sdpa_forward(
        module, q, k, v, None, sliding_window=window, cu_seq_lens_q=torch.tensor(bounds, dtype=torch.int32)
    )
    ref = reference_attention(q, k, v, block_causal(bounds, window))
    assert out.shape == (1, bounds[-1], 4, 8)
    assert torch.allclose(out, ref, atol=1e-10)
    for got, want in zip(grads_of(out, [q, k, v]), grads_of(ref, [q, k, v]), strict=True):
        assert torch.allclose(got, want, atol=1e-10)


def test_varlen_sdpa_attends_within_each_padded_row_on_either_side() -> None:
    q, k, v = qkv(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    out, _ = varlen_sdpa.varlen_sdpa_forward(torch.nn.Module().eval(), q, k, v, mask)
    causal = block_causal([0, 6])
    for row in range(3):
        ref = reference_attention(q[row : row + 1], k[row : row + 1], v[row : row + 1], causal & mask[row])
        real = mask[row]  # what a padding query computes is never used
        assert torch.allclose(out[row, real], ref[0, real], atol=1e-10)


def test_a_varlen_sdpa_model_gives_packed_examples_their_unpacked_logits_and_gradients(
    tiny_model: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    varlen_sdpa.register()
    model, examples = load(tiny_model, varlen_sdpa.NAME), examples_of(tokenizer)
    padded, varlen = collate(examples, pad_id(tokenizer)), collate_varlen(examples)
    error = max_error(
        per_example_logits(model, varlen, examples), per_example_logits(model, padded, examples)
    )
    assert error < 1e-4
    grads = []
    for batch in (varlen, padded):
        model.zero_grad(set_to_none=True)
        loss_sum, n, _ = token_loss(model(**batch.model_inputs()).logits, batch.labels)
        (loss_sum / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
