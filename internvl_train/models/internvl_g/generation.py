"""Caption generation with InternVL-G: QLLaMA's ITG pass (text sees all queries, queries see the image).

Greedy decoding without a KV cache: every new token re-runs the ITG pass over [queries | prompt + generated].
The queries never see the text, so their outputs are the same at every step; the cost is O(T^2) in the
caption length, which is fine for captions of a few dozen tokens (evaluation only).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

ItgLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (vision, ids, mask) -> [B,T,V]


@torch.no_grad()
def greedy_caption_ids(itg_logits: ItgLogits, vision_tokens: torch.Tensor, prompt_ids: torch.Tensor, eos_token_id: int,
                       max_new_tokens: int) -> list[list[int]]:
    """Generated token ids per image (prompt and EOS excluded).

    itg_logits: InternVLG's ITG pass, e.g. `lambda v, i, m: model(v, i, m, task="itg_logits")` (the module
        call, so ZeRO-3 gathers the parameters).
    vision_tokens: [B, N, C] ViT tokens; prompt_ids: [P] the prompt every caption starts from (BOS + the ITG
    prefix, exactly as in training)."""
    batch = vision_tokens.shape[0]
    ids = prompt_ids.to(vision_tokens.device).reshape(1, -1).expand(batch, -1).clone()
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = itg_logits(vision_tokens, ids, torch.ones_like(ids))[:, -1]
        next_ids = torch.where(done, torch.full_like(done, eos_token_id, dtype=ids.dtype), logits.argmax(dim=-1))
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        done |= next_ids == eos_token_id
        if bool(done.all()):
            break
    generated = ids[:, prompt_ids.numel():].tolist()
    return [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in generated]


def greedy_captions(itg_logits: ItgLogits, tokenizer: Any, vision_tokens: torch.Tensor, prefix: str,
                    max_new_tokens: int) -> list[str]:
    """Greedy captions (decoded text) for a batch of images, prompted with `prefix` (e.g. "English caption:")."""
    prompt = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    if prompt and prompt[-1] == tokenizer.eos_token_id:
        prompt = prompt[:-1]  # a tokenizer that appends EOS: the prompt must stay open
    ids = greedy_caption_ids(itg_logits, vision_tokens, torch.tensor(prompt, dtype=torch.long), tokenizer.eos_token_id,
                             max_new_tokens)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
