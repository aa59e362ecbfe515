"""InternVL-C (stage 1): InternViT + LLaMA text tower + CLIP heads, trained with ITC."""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from internvl_train.models.config import ModelConfig, as_model_config
from internvl_train.models.internvl_c.heads import AttentionPooling
from internvl_train.models.internvl_c.text_tower import build_text_tower, gather_last_token
from internvl_train.models.internvit.modeling import build_vision_tower


class InternVLC(nn.Module):
    """`vision` (InternViT), `text` (LlamaForCausalLM), `clip_projector`, `text_projection`, `logit_scale`.

    Construction uses standard nn/transformers init only, so it works on the meta device and inside
    deepspeed.zero.Init. Weights come from internvl_c/build.py (build_internvl_c, load_*_weights) or
    weights.from_pretrained."""

    def __init__(self, cfg: Any, vocab_size: Optional[int] = None):
        super().__init__()
        cfg = copy.deepcopy(as_model_config(cfg))  # the vocab size is filled in below: never mutate the caller's
        self.config: ModelConfig = cfg
        self.vision = build_vision_tower(cfg.vision)
        self.text = self.build_text(cfg, vocab_size)
        cfg.text.vocab_size = self.text.config.vocab_size  # the saved config must rebuild this exact model
        self.clip_projector = AttentionPooling(cfg.vision.hidden_size, cfg.clip_projector_heads, cfg.embed_dim)
        width = cfg.text.hidden_size
        self.text_projection = nn.Parameter(torch.randn(width, cfg.embed_dim) * width**-0.5)
        # shape [1], not []: ZeRO-3 cannot partition 0-dim parameters (official checkpoints hold [], the
        # adapter reshapes)
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.logit_scale_init)))

    def build_text(self, cfg: ModelConfig, vocab_size: Optional[int]) -> nn.Module:
        return build_text_tower(cfg.text, vocab_size)

    # ---- image side --------------------------------------------------------------------------
    def vision_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All final ViT tokens [B, 1 + patches, C], CLS first."""
        return self.vision(pixel_values=pixel_values).last_hidden_state

    def encode_image_c(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """InternVL-C image embedding [B, E] (unnormalised): attention pooling over all ViT tokens."""
        return self.clip_projector(vision_tokens)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode_image_c(self.vision_tokens(pixel_values))

    # ---- text side ---------------------------------------------------------------------------
    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption embedding [B, E] (unnormalised): causal LLaMA, hidden state at the EOS, @ text_projection."""
        return self.project_text(self.text_hidden(input_ids, attention_mask), attention_mask)

    def project_text(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text hidden states [B, T, D] -> caption embedding [B, E]: the EOS state @ text_projection."""
        return gather_last_token(hidden, attention_mask) @ self.text_projection.to(hidden.dtype)

    # ---- both --------------------------------------------------------------------------------
    def clip(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             text_logits: bool = False) -> dict[str, torch.Tensor]:
        """Normalised image/text embeddings and exp(logit_scale) (0-dim), the inputs of the ITC loss; with
        `text_logits`, also the LM logits [B, T, V] of the same text pass (the text tower's own LM loss)."""
        hidden = self.text_hidden(input_ids, attention_mask)
        out = {
            "image_embeds": F.normalize(self.encode_image(pixel_values), dim=-1),
            "text_embeds": F.normalize(self.project_text(hidden, attention_mask), dim=-1),
            "logit_scale": self.logit_scale.exp().squeeze(0),
        }
        if text_logits:
            out["text_logits"] = self.text.lm_head(hidden)
        return out

    TASKS = ("clip", "vision_tokens", "encode_image", "encode_image_c", "encode_text")

    def forward(self, *args: Any, task: str = "clip", **kwargs: Any) -> Any:
        """Run one of TASKS (default: `clip(pixel_values, input_ids, attention_mask)`).

        Under ZeRO-3 only a call of the module itself gathers its own top-level parameters
        (`text_projection`, `logit_scale`, `query_tokens`), so call every task through here, e.g.
        `model(ids, mask, task="encode_text")`, not `model.encode_text(...)`."""
        if task not in self.TASKS:
            raise ValueError(f"unknown task {task!r} for {type(self).__name__}; expected one of {self.TASKS}")
        return getattr(self, task)(*args, **kwargs)
