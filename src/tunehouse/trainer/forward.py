"""Forward passes: examples into batches into losses, the same way for every objective.

Batches are collated on the host (on a background thread when they were asked for ahead with
``prefetch``), pinned on CUDA, and copied to the device without blocking the host.

When the model's logits are its LM head applied to the decoder's last hidden states and nothing
else (checked once, numerically, by ``plain_head``), losses skip the full logits: the decoder runs
alone, its hidden states at labelled positions are gathered, and linear_ce.py applies the head a
chunk at a time (Liger's fused kernel on CUDA). Otherwise (soft-capped or scaled logits, an adapted
head) the losses come from the model's full logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import Batch, collate, collate_packed, collate_varlen, pad_to_multiple
from .linear_ce import linear_cross_entropy, linear_sequence_logps, next_token_rows, token_correct
from .losses import sequence_logps, token_sums
from .prefetch import Prefetcher
from .tokenization import Example, Pair


@dataclass(frozen=True)
class Forward:
    device: torch.device
    autocast: bool  # bf16 autocast around the model call
    packing: bool
    varlen: bool  # pack each micro-batch into one row (flash attention separates examples only so)
    pad_id: int
    max_seq_len: int
    prefetcher: Prefetcher = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    bucket: int = 0  # pad row lengths to a multiple of this (compiled layers); 0: no padding
    linear_head: bool = False  # losses through linear_ce from hidden states (see plain_head)

    def __post_init__(self) -> None:
        if self.prefetcher is None:
            object.__setattr__(self, "prefetcher", Prefetcher(pin=self.device.type == "cuda"))

    def _pack(self, pack: bool | None) -> bool:
        return self.packing if pack is None else pack

    def host_batch(self, examples: list[Example], pack: bool | None = None) -> Batch:
        if self._pack(pack):
            batch = (
                collate_varlen(examples)
                if self.varlen
                else collate_packed(examples, self.max_seq_len, self.pad_id)
            )
        else:
            batch = collate(examples, self.pad_id)
        return pad_to_multiple(batch, self.bucket, self.pad_id) if self.bucket else batch

    @staticmethod
    def _key(examples: list[Example], pack: bool) -> tuple[Any, ...]:
        # Examples live as long as the run's item lists, so their identities name a batch.
        return (pack, *map(id, examples))

    def prefetch(self, groups: list[list[Example]], pack: bool | None = None) -> None:
        """Start collating these batches (each a list of examples) on the background thread."""
        packed = self._pack(pack)
        for examples in groups:
            self.prefetcher.submit(self._key(examples, packed), lambda e=examples: self.host_batch(e, packed))

    def batch(self, examples: list[Example], pack: bool | None = None) -> Batch:
        packed = self._pack(pack)
        host = self.prefetcher.take(self._key(examples, packed), lambda: self.host_batch(examples, packed))
        return host.to(self.device, non_blocking=self.prefetcher.pin)

    def logits(self, model: Any, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model(**batch.model_inputs()).logits

    def _hidden(self, model: Any, batch: Batch) -> tuple[torch.Tensor, torch.nn.Linear]:
        """(the decoder's last hidden states, the LM head) for ``batch``."""
        lm = causal_lm(model)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            hidden = lm.get_decoder()(**batch.model_inputs()).last_hidden_state
        return hidden, lm.get_output_embeddings()

    def token_sums(self, model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed next-token cross-entropy, target count, argmax-correct count) as device tensors."""
        if not self.linear_head:
            return token_sums(self.logits(model, batch), batch.labels)
        hidden, head = self._hidden(model, batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return linear_cross_entropy(hidden, head.weight, batch.labels, head.bias)

    @staticmethod
    def pair_examples(pairs: list[Pair]) -> list[Example]:
        """Both replies of every pair, in the one batch that ``pair_logps`` runs."""
        return [p.chosen for p in pairs] + [p.rejected for p in pairs]

    def pair_logps(
        self, model: Any, pairs: list[Pair]
    ) -> tuple[torch.Tensor, torch.Tensor, Batch, torch.Tensor, torch.Tensor]:
        """(chosen log-probs, rejected log-probs, the batch, the chosen replies' target count and
        argmax-correct count): both replies in one forward."""
        batch = self.batch(self.pair_examples(pairs), pack=False)
        k = len(pairs)
        if not self.linear_head:
            logits = self.logits(model, batch)
            logps = sequence_logps(logits, batch.labels)
            _, n, correct = token_sums(logits[:k].detach(), batch.labels[:k])
            return logps[:k], logps[k:], batch, n, correct
        hidden, head = self._hidden(model, batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logps = linear_sequence_logps(hidden, head.weight, batch.labels, head.bias)
            h, targets, _ = next_token_rows(hidden[:k].detach(), batch.labels[:k])
            correct = token_correct(h, head.weight.detach(), targets, head.bias)
        return logps[:k], logps[k:], batch, torch.tensor(targets.numel(), device=hidden.device), correct


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def causal_lm(model: Any) -> Any:
    """The transformers causal LM under a PEFT wrapper (its layers carry the adapter)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def plain_head(model: Any, device: torch.device) -> bool:
    """Whether ``model``'s logits are exactly its plain linear LM head over the decoder's output, so
    that losses may go through linear_ce: checked on a few tokens, in eval mode (no dropout)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear or not hasattr(lm, "get_decoder"):
        return False  # an adapted or custom head: only the model's own forward applies it right
    config = getattr(lm.config, "text_config", None) or lm.config
    # Transformations of the logits a few tokens of an untrained model would not show numerically.
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in LOGIT_TRANSFORMS):
        return False
    training = model.training
    model.eval()
    try:
        ids = (torch.arange(8, device=device) % head.out_features)[None]
        logits = model(input_ids=ids, use_cache=False).logits
        hidden = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        return torch.allclose(head(hidden).float(), logits.float(), rtol=1e-4, atol=1e-4)
    except Exception:  # noqa: BLE001 - a model this does not fit keeps the full-logits path
        return False
    finally:
        model.train(training)
