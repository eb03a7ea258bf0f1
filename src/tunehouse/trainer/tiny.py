"""``tunehouse-tiny``: a few-hundred-kilobyte chat model built offline from the shipped corpus.

It is random-initialized and knows nothing, but it has a real tokenizer, a chat template and the
Qwen2 architecture, so every code path (LoRA, full fine-tuning, generation) runs on a laptop CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The server builds the model through this module's __main__ (tunehouse.contract.tiny), never in-process.
from tunehouse.contract.tiny import is_complete_model

CORPUS_DIR = Path(__file__).parent / "corpus"
VOCAB_SIZE = 1024
SEED = 1234

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML; every prefix of a conversation renders to a prefix of the whole, which the loss masking
# in tokenization.py relies on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus_lines() -> list[str]:
    lines: list[str] = []
    for file in sorted(CORPUS_DIR.glob("*.txt")):
        lines += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def _build_tokenizer():  # -> PreTrainedTokenizerFast; imported lazily to keep module import cheap
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact; loss masking maps chars to tokens.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat-formatted copies teach the merges for the template's role markers too.
    lines = _corpus_lines()
    tok.train_from_iterator(lines + [f"user\n{line}\nassistant\n" for line in lines[:50]], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def _write_model(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A private generator state would be nicer, but HF init draws from the global one.
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny_model(dest: Path) -> Path:
    """Build the model at ``dest`` unless a complete one is already there; return ``dest``.

    The build happens in a sibling temp dir renamed into place, so a concurrent caller either
    sees no model or a whole one.
    """
    dest = Path(dest)
    if is_complete_model(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        # Not ours to delete (could be a user's half-copied dir); move it aside and rebuild.
        dest.rename(dest.with_name(f"{dest.name}.incomplete-{int(time.time())}"))
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_model(tmp)
        # mkdtemp makes the dir 0700; give it the usual umask-derived mode so the server can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process won the race; its model is complete by construction.
            if not is_complete_model(dest):
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return dest


if __name__ == "__main__":
    build_tiny_model(Path(sys.argv[1]))
