"""Image-grounded text generation (ITG, stage 2): label construction and the shifted next-token loss.

Stage 2 trains QLLaMA to caption with the prefix "English caption:" (FACTS.md): the prefix tokens are not
targets except the last one, the caption tokens and its EOS are, padding never is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from internvl_train.losses.labels import IGNORE_INDEX


def itg_labels(
    input_ids: torch.Tensor, prefix_len: int | torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Labels for `input_ids` [B, T] = prefix + caption (+ EOS), right or left padded.

    prefix_len: number of prefix tokens (int, or [B] per sample), counted from each row's first real token
    (BOS included if the tokenizer adds one). Positions before the prefix's last token and padding -> -100.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"itg_labels: input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must have the same [batch, seq] shape."
        )
    real = attention_mask.bool()
    first_real = real.int().argmax(dim=1, keepdim=True)  # 0 for right padding, #pads for left padding
    relative = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] - first_real
    prefix = torch.as_tensor(prefix_len, device=input_ids.device).reshape(-1, 1)
    if (prefix < 1).any():
        raise ValueError(f"itg_labels: prefix_len must be >= 1 (the prefix has tokens), got {prefix_len}.")
    labels = input_ids.clone()
    labels[(relative < prefix - 1) | ~real] = IGNORE_INDEX
    return labels


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits[:, t] against labels[:, t + 1] in fp32, ignoring -100."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"next_token_ce: logits {tuple(logits.shape)} must be [batch, seq, vocab] over labels "
            f"{tuple(labels.shape)} [batch, seq]."
        )
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction=reduction)


def itg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the supervised caption tokens of the micro-batch.

    Raises when nothing is supervised (every caption truncated away): a silent zero loss hides a data bug."""
    if not (labels[:, 1:] != IGNORE_INDEX).any():
        raise ValueError(
            "itg_loss: no supervised token in the batch (all labels are -100 after the prefix); check the "
            "caption max length and the prefix length."
        )
    return next_token_ce(logits, labels)
