"""Forward passes: examples into batches into logits, the same way for every objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .batching import Batch, collate, collate_packed, collate_varlen
from .losses import sequence_logps
from .tokenization import Example, Pair


@dataclass(frozen=True)
class Forward:
    device: torch.device
    autocast: bool  # bf16 autocast around the model call
    packing: bool
    varlen: bool  # pack each micro-batch into one row (flash attention separates examples only so)
    pad_id: int
    max_seq_len: int

    def batch(self, examples: list[Example], pack: bool | None = None) -> Batch:
        if self.packing if pack is None else pack:
            if self.varlen:
                return collate_varlen(examples, self.device)
            return collate_packed(examples, self.max_seq_len, self.pad_id, self.device)
        return collate(examples, self.pad_id, self.device)

    def logits(self, model: Any, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model(**batch.model_inputs()).logits

    def pair_logps(
        self, model: Any, pairs: list[Pair]
    ) -> tuple[torch.Tensor, torch.Tensor, Batch, torch.Tensor]:
        """(chosen log-probs, rejected log-probs, the batch, its logits): both replies in one forward."""
        batch = self.batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pack=False)
        logits = self.logits(model, batch)
        logps = sequence_logps(logits, batch.labels)
        return logps[: len(pairs)], logps[len(pairs) :], batch, logits
