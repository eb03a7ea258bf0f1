"""Losses: pure functions over logits and labels (no model, no state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokenization import IGNORE_INDEX


def token_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, labelled token count, correctly predicted count) for next-token targets,
    all as device tensors: reading them would make the host wait for the device."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss_sum, mask.sum(), correct


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``token_sums`` with the counts read back as ints."""
    loss_sum, n, correct = token_sums(logits, labels)
    return loss_sum, int(n), int(correct)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the summed log-probability of its labelled next tokens."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.view(targets.shape).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss, per-pair reward margin) of the sigmoid DPO objective."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin
