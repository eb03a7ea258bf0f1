"""Offline stand-ins for the major chat-model families, for tests of what the trainer learns.

Each family pairs its real published chat template (``tests/fixtures/chat_templates``, sources in
SOURCES.md) and its real special tokens with a tokenizer trained here on the package's own corpus and a
random-weight model of its real architecture, small enough that a forward pass takes milliseconds.
What these stand-ins copy from the real ones: the template text, the special tokens (each one token),
which token ends an assistant turn, the tokenizer's pre-tokenization style (byte-level BPE, or
SentencePiece-style Metaspace with byte fallback), whether ``tokenizer(text)`` prepends BOS, and the
``eos_token_id`` list of generation_config.json. What they don't: the vocabulary itself (about 1.5k
pieces instead of 32k-256k) and SentencePiece's legacy per-segment prefix space.

Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunehouse.trainer.tiny import _corpus_lines

TEMPLATE_DIR = Path(__file__).parent / "fixtures" / "chat_templates"
VOCAB_SIZE = 1536  # pieces learned by BPE; SentencePiece-style families add 256 byte-fallback pieces
SEED = 1234

TokenizerStyle = Literal["bytelevel", "sentencepiece"]
# Where the template puts a system message: a turn of its own; prefixed to the first user turn;
# prefixed to the last user turn, and only when that turn is the conversation's last message (so a
# conversation that ends on an assistant reply loses it); inline after BOS with no role marker; or
# nowhere (the template raises).
SystemPrompt = Literal["turn", "first_user", "last_user", "inline", "refused"]

# The pre-tokenizer regexes of the real byte-level tokenizer.json files: Qwen2 (digits one by one) and
# Llama-3 / GLM-4 (runs of up to three digits).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    key: str
    model_id: str  # the published model whose template, tokens and generation config are copied
    template_file: str
    config_class: str  # transformers config class
    model_class: str  # transformers model class
    tokenizer_style: TokenizerStyle
    special_tokens: tuple[str, ...]  # added special tokens, in id order; includes bos/eos/pad/unk
    eos: str  # tokenizer_config eos_token
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    added_tokens: tuple[str, ...] = ()  # added but not special (Qwen3's <think> stays visible on decode)
    call_prefix: tuple[str, ...] = ()  # what the tokenizer's own __call__ prepends (post-processor)
    generation_eos: tuple[str, ...] = ()  # generation_config.json eos_token_id, as token strings
    end_of_turn: str | None = None  # the token the template puts after assistant content; None: none
    system_prompt: SystemPrompt = "turn"
    prepend_space: bool = True  # SentencePiece-style only: a leading "▁" on the text's first piece
    split_regex: str = QWEN_SPLIT  # byte-level only

    @property
    def template_path(self) -> Path:
        return TEMPLATE_DIR / self.template_file

    @property
    def chat_template(self) -> str:
        return self.template_path.read_text(encoding="utf-8")

    @property
    def system_role(self) -> bool:
        """Whether the template accepts a system message at all."""
        return self.system_prompt != "refused"

    @property
    def adds_bos(self) -> bool:
        """Whether ``tokenizer(text)`` prepends something (BOS; GLM-4: ``[gMASK]<sop>``)."""
        return bool(self.call_prefix)


_QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_DEEPSEEK_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
)
_LLAMA3_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
_MISTRAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)
_GEMMA_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
_PHI3_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|user|>",
)
_GLM4_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)


def _qwen2_5(key: str, template: str) -> Family:
    return Family(
        key=key,
        model_id="Qwen/Qwen2.5-0.5B-Instruct",
        template_file=template,
        config_class="Qwen2Config",
        model_class="Qwen2ForCausalLM",
        tokenizer_style="bytelevel",
        special_tokens=_QWEN_TOKENS,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        added_tokens=("<tool_call>", "</tool_call>"),
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        end_of_turn="<|im_end|>",
    )


FAMILIES: dict[str, Family] = {
    f.key: f
    for f in (
        _qwen2_5("qwen2_5", "qwen2_5.jinja"),
        _qwen2_5("qwen2_5_generation", "qwen2_5_generation.jinja"),
        Family(
            key="qwen3",
            model_id="Qwen/Qwen3-0.6B",
            template_file="qwen3.jinja",
            config_class="Qwen3Config",
            model_class="Qwen3ForCausalLM",
            tokenizer_style="bytelevel",
            special_tokens=_QWEN_TOKENS,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            added_tokens=("<tool_call>", "</tool_call>", "<think>", "</think>"),
            generation_eos=("<|im_end|>", "<|endoftext|>"),
            end_of_turn="<|im_end|>",
        ),
        Family(
            key="llama3_1",
            model_id="meta-llama/Llama-3.1-8B-Instruct",
            template_file="llama3_1.jinja",
            config_class="LlamaConfig",
            model_class="LlamaForCausalLM",
            tokenizer_style="bytelevel",
            special_tokens=_LLAMA3_TOKENS,
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            call_prefix=("<|begin_of_text|>",),
            generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
            end_of_turn="<|eot_id|>",
            split_regex=LLAMA3_SPLIT,
        ),
        Family(
            key="mistral_v0_3",
            model_id="mistralai/Mistral-7B-Instruct-v0.3",
            template_file="mistral_v0_3.jinja",
            config_class="MistralConfig",
            model_class="MistralForCausalLM",
            tokenizer_style="sentencepiece",
            special_tokens=_MISTRAL_TOKENS,
            bos="<s>",
            eos="</s>",
            unk="<unk>",
            call_prefix=("<s>",),
            generation_eos=("</s>",),
            end_of_turn="</s>",
            system_prompt="last_user",
        ),
        Family(
            key="gemma2",
            model_id="google/gemma-2-2b-it",
            template_file="gemma2.jinja",
            config_class="Gemma2Config",
            model_class="Gemma2ForCausalLM",
            tokenizer_style="sentencepiece",
            special_tokens=_GEMMA_TOKENS,
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            call_prefix=("<bos>",),
            generation_eos=("<eos>", "<end_of_turn>"),
            end_of_turn="<end_of_turn>",
            system_prompt="refused",
            prepend_space=False,
        ),
        Family(
            key="gemma3",
            model_id="google/gemma-3-1b-it",
            template_file="gemma3.jinja",
            config_class="Gemma3TextConfig",
            model_class="Gemma3ForCausalLM",
            tokenizer_style="sentencepiece",
            special_tokens=(*_GEMMA_TOKENS, "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            call_prefix=("<bos>",),
            generation_eos=("<eos>", "<end_of_turn>"),
            end_of_turn="<end_of_turn>",
            system_prompt="first_user",
            prepend_space=False,
        ),
        Family(
            key="phi3_5",
            model_id="microsoft/Phi-3.5-mini-instruct",
            template_file="phi3_5.jinja",
            config_class="Phi3Config",
            model_class="Phi3ForCausalLM",
            tokenizer_style="sentencepiece",
            special_tokens=_PHI3_TOKENS,
            bos="<s>",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            unk="<unk>",
            call_prefix=("<s>",),
            generation_eos=("<|end|>", "<|assistant|>", "<|endoftext|>"),
            end_of_turn="<|end|>",
        ),
        Family(
            key="deepseek_r1_distill",
            model_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            template_file="deepseek_r1_distill.jinja",
            config_class="Qwen2Config",
            model_class="Qwen2ForCausalLM",
            tokenizer_style="bytelevel",
            special_tokens=_DEEPSEEK_TOKENS,
            bos="<｜begin▁of▁sentence｜>",
            eos="<｜end▁of▁sentence｜>",
            pad="<｜end▁of▁sentence｜>",
            added_tokens=("<think>", "</think>"),
            call_prefix=("<｜begin▁of▁sentence｜>",),
            generation_eos=("<｜end▁of▁sentence｜>",),
            end_of_turn="<｜end▁of▁sentence｜>",
            system_prompt="inline",
        ),
        Family(
            key="glm4",
            model_id="THUDM/glm-4-9b-chat-hf",
            template_file="glm4.jinja",
            config_class="GlmConfig",
            model_class="GlmForCausalLM",
            tokenizer_style="bytelevel",
            special_tokens=_GLM4_TOKENS,
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            call_prefix=("[gMASK]", "<sop>"),
            generation_eos=("<|endoftext|>", "<|user|>", "<|observation|>"),
            end_of_turn=None,  # the model ends its turn by emitting the next role token, <|user|>
            split_regex=LLAMA3_SPLIT,
        ),
    )
}

# A system prompt and three exchanges, each with a trap for label masking that searches text:
# "OK." also ends the user's "Reply with OK."; "The" merges with the space before it in
# SentencePiece vocabularies ("▁The"); the last two replies repeat words of their questions.
SYSTEM_THREE_TURNS: list[dict[str, str]] = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
    {"role": "user", "content": "Reply with OK."},
    {"role": "assistant", "content": "OK."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "How many days are in a week?"},
    {"role": "assistant", "content": "There are seven days in a week."},
]

# Reasoning in the content, as R1-style datasets carry it: on the last turn and on an earlier one.
REASONING_TURNS: list[dict[str, str]] = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "<think>\nTwo plus two makes four.\n</think>\n\nFour."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "An apple."},
    {"role": "user", "content": "What is three plus three?"},
    {"role": "assistant", "content": "<think>\nThree plus three makes six.\n</think>\n\nSix."},
]


# -- tokenizers ----------------------------------------------------------------------------------------


def _training_text() -> list[str]:
    lines = _corpus_lines()
    # Newlines and the templates' role words appear in every rendering; let BPE learn them too.
    return lines + [f"user\n{line}\nassistant\n" for line in lines[:50]]


def _with_byte_fallback(tok: Any, n_special: int) -> Any:
    """Insert SentencePiece's 256 ``<0xNN>`` pieces right after the special tokens, as Llama-2-style
    vocabularies have them, so any character (a template's "｜", an emoji) still encodes."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    shifted = {
        piece: i if i < n_special else i + 256 for piece, i in vocab.items() if piece not in byte_pieces
    }
    shifted.update({piece: n_special + b for b, piece in enumerate(byte_pieces)})
    spec["model"]["vocab"] = shifted
    for added in spec["added_tokens"]:
        added["id"] = shifted[added["content"]]
    return Tokenizer.from_str(json.dumps(spec))


@functools.cache
def _backend_json(key: str) -> str:
    """The trained ``tokenizers`` pipeline of a family, serialized (training is the slow part)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    family = FAMILIES[key]
    specials = list(family.special_tokens)
    if family.tokenizer_style == "bytelevel":
        tok = Tokenizer(models.BPE())
        if family.split_regex == QWEN_SPLIT:
            tok.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalizes; Llama-3's doesn't
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(family.split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_training_text(), trainer=trainer)
    else:
        tok = Tokenizer(models.BPE(unk_token=family.unk, byte_fallback=True, fuse_unk=True))
        scheme = "first" if family.prepend_space else "never"
        # Train word by word (SentencePiece never merges across a space), then encode whole runs
        # the way Llama-2-style tokenizer.json files do (split=False).
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False)
        tok.train_from_iterator(_training_text(), trainer=trainer)
        tok = _with_byte_fallback(tok, len(specials))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if family.prepend_space:
            steps.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(steps)
    if family.added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.added_tokens])

    steps = [processors.ByteLevel(trim_offsets=False)] if family.tokenizer_style == "bytelevel" else []
    if family.call_prefix:
        prefix = " ".join(f"{t}:0" for t in family.call_prefix)
        steps.append(
            processors.TemplateProcessing(
                single=f"{prefix} $A:0",
                pair=f"{prefix} $A:0 $B:1",
                special_tokens=[(t, tok.token_to_id(t)) for t in family.call_prefix],
            )
        )
    if steps:
        tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)
    return tok.to_str()


def build_family_tokenizer(key: str) -> Any:  # -> PreTrainedTokenizerFast
    """A fresh tokenizer of the family (callers may change it; the trained pipeline is cached)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    family = FAMILIES[key]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_backend_json(key)),
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token=family.unk,
        chat_template=family.chat_template,
        model_max_length=1024,
    )


# -- models --------------------------------------------------------------------------------------------

_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)


def _token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    assert None not in ids and tokenizer.unk_token_id not in ids, (tokens, ids)
    return ids


def _one_or_list(ids: list[int]) -> int | list[int]:
    return ids[0] if len(ids) == 1 else ids


def build_family_model(key: str, dest: Path) -> Path:
    """Write a random-weight Hugging Face model directory of the family to ``dest`` (unless a
    complete one is there) and return ``dest``. Same weights every time (fixed seed)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    dest = Path(dest)
    if all((dest / name).is_file() for name in _MODEL_FILES):
        return dest
    family = FAMILIES[key]
    tokenizer = build_family_tokenizer(key)
    eos_ids = _token_ids(tokenizer, family.generation_eos)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": _one_or_list(eos_ids),
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        **ids,
    )
    model_class = getattr(transformers, family.model_class)
    # HF init draws from the global generator; keep callers' random streams untouched.
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = model_class(config)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config = GenerationConfig(**ids)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
