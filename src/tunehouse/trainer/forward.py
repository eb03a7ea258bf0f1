"""Forward passes: examples into batches into logits, the same way for every objective.

Batches are collated on the host (on a background thread when they were asked for ahead with
``prefetch``), pinned on CUDA, and copied to the device without blocking the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import Batch, collate, collate_packed, collate_varlen, pad_to_multiple
from .losses import sequence_logps
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

    @staticmethod
    def pair_examples(pairs: list[Pair]) -> list[Example]:
        """Both replies of every pair, in the one batch that ``pair_logps`` runs."""
        return [p.chosen for p in pairs] + [p.rejected for p in pairs]

    def pair_logps(
        self, model: Any, pairs: list[Pair]
    ) -> tuple[torch.Tensor, torch.Tensor, Batch, torch.Tensor]:
        """(chosen log-probs, rejected log-probs, the batch, its logits): both replies in one forward."""
        batch = self.batch(self.pair_examples(pairs), pack=False)
        logits = self.logits(model, batch)
        logps = sequence_logps(logits, batch.labels)
        return logps[: len(pairs)], logps[len(pairs) :], batch, logits
