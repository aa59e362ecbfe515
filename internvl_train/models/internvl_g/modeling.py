"""InternVL-G (stage 2): InternVL-C whose text tower becomes QLLaMA (queries + cross-attention), plus
`clip_projector2` over the query outputs and `itm_head`.

Only `query_tokens`, the cross-attention modules, `clip_projector2` and `itm_head` are new relative to
InternVL-C (NEW_IN_G); everything else is inherited from the stage-1 weights.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from internvl_train.models.config import ModelConfig
from internvl_train.models.internvl_c.heads import AttentionPooling
from internvl_train.models.zero3 import construct_hf
from internvl_train.models.internvl_c.modeling import InternVLC
from internvl_train.models.qllama.modeling import QLlamaForCausalLM
from internvl_train.models.qllama.masks import query_only_mask, stage2_attention_mask
from internvl_train.models.internvl_c.text_tower import llama_config

log = logging.getLogger(__name__)

NEW_IN_G = (r"query_tokens", r"text\.model\.layers\.\d+\.cross_attn\..*", r"clip_projector2\..*",
            r"itm_head\..*")


class InternVLG(InternVLC):
    """InternVL-C + QLLaMA. One QLLaMA forward serves ITM/ITC/ITG through its 4-D mask (qllama/masks.py)."""

    def __init__(self, cfg: Any, vocab_size: Optional[int] = None):
        super().__init__(cfg, vocab_size)
        cfg = self.config
        cfg.validate_qllama()
        width = cfg.text.hidden_size
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.qllama.num_query_tokens, width)
                                         * cfg.qllama.query_init_std)
        self.clip_projector2 = AttentionPooling(width, cfg.clip_projector_heads, cfg.embed_dim)
        self.itm_head = nn.Linear(width, 2)

    def build_text(self, cfg: ModelConfig, vocab_size: Optional[int]) -> nn.Module:
        config = llama_config(cfg.text, vocab_size)
        model = construct_hf(lambda: QLlamaForCausalLM(config, cfg.vision_width, cfg.qllama.cross_attention_every))
        if cfg.text.gradient_checkpointing:
            model.activation_checkpointing_enable()
        return model

    TASKS = InternVLC.TASKS + ("encode_image_g", "encode_image_cg", "query_outputs", "qllama_hidden", "itm_logits",
                               "itg_logits")

    @property
    def num_queries(self) -> int:
        return self.config.qllama.num_query_tokens  # not the parameter's shape: empty when ZeRO-3 partitioned

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text alone through QLLaMA (causal, no queries, no vision), as InternVL-G's text encoder."""
        return self.text.model(input_ids=input_ids, attention_mask=attention_mask)

    # ---- QLLaMA passes -----------------------------------------------------------------------
    def qllama_hidden(self, vision_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      kind: str) -> torch.Tensor:
        """Final hidden states [B, Q + T, D] of [queries | text] under the `kind` mask (itm | itc | itg)."""
        text_embeds = self.text.model.embed_tokens(input_ids)
        queries = self.query_tokens.to(text_embeds.dtype).expand(input_ids.shape[0], -1, -1)
        embeds = torch.cat([queries, text_embeds], dim=1)
        mask = stage2_attention_mask(kind, attention_mask, self.num_queries, embeds.dtype)
        return self.text.model(inputs_embeds=embeds, attention_mask=mask, vision_states=vision_tokens,
                               num_queries=self.num_queries)

    def itm_logits(self, vision_tokens: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """Match/no-match logits [B, 2]: itm_head averaged over the query outputs of the ITM pass."""
        hidden = self.qllama_hidden(vision_tokens, input_ids, attention_mask, "itm")
        return self.itm_head(hidden[:, : self.num_queries]).mean(dim=1)

    def itg_logits(self, vision_tokens: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """LM logits [B, T, V] over the text positions of the ITG pass (logit t predicts token t+1)."""
        hidden = self.qllama_hidden(vision_tokens, input_ids, attention_mask, "itg")
        return self.text.lm_head(hidden[:, self.num_queries:])

    def query_outputs(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Query outputs [B, Q, D] with cross-attention and no text (the ITC/ITG query path)."""
        b = vision_tokens.shape[0]
        dtype = self.query_tokens.dtype
        embeds = self.query_tokens.expand(b, -1, -1)
        mask = query_only_mask(b, self.num_queries, dtype, vision_tokens.device)
        return self.text.model(inputs_embeds=embeds, attention_mask=mask, vision_states=vision_tokens,
                               num_queries=self.num_queries)

    def encode_image_g(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """InternVL-G image embedding [B, E] (unnormalised): clip_projector2 over the query outputs."""
        return self.clip_projector2(self.query_outputs(vision_tokens))

    def encode_image_cg(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """The official InternVL-G image embedding [B, E]: normalize(C) + normalize(G), NOT normalised again
        (as the official `encode_image`; its `forward`, like every caller here, normalises the result)."""
        c = F.normalize(self.encode_image_c(vision_tokens), dim=-1)
        g = F.normalize(self.encode_image_g(vision_tokens), dim=-1)
        return c + g

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """As the official InternVL-G `encode_image`: the un-normalised ensemble (encode_image_cg)."""
        return self.encode_image_cg(self.vision_tokens(pixel_values))

    # ---- what stage 2 trains -----------------------------------------------------------------
    def stage2_frozen_modules(self, train_qllama: bool = False) -> list[nn.Module]:
        """Inherited modules stage 2 keeps frozen (as the official InternVL-G): the ViT, `clip_projector`
        and, unless `train_qllama`, every LLaMA part except the cross-attention. `text_projection` (a bare
        parameter) is frozen too: see stage2_frozen_parameters. Trained: NEW_IN_G and `logit_scale`."""
        if train_qllama:
            return [self.vision, self.clip_projector]
        llama = self.text.model
        per_layer = [m for layer in llama.layers
                     for m in (layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)]
        return [self.vision, self.clip_projector, llama.embed_tokens, llama.norm, self.text.lm_head, *per_layer]

    def stage2_frozen_parameters(self) -> list[nn.Parameter]:
        return [self.text_projection]

    # ---- construction from stage 1 -----------------------------------------------------------
    @classmethod
    def from_internvl_c(cls, model_c: InternVLC, cfg: Optional[Any] = None) -> "InternVLG":
        """InternVL-G inheriting every InternVL-C weight; logs the parameters it creates."""
        from internvl_train.models.weights import load_state_into

        cfg = cfg if cfg is not None else model_c.config
        model_g = cls(cfg, vocab_size=model_c.text.config.vocab_size)
        report = load_state_into(model_g, model_c.state_dict(), new_ok=NEW_IN_G)
        log.info("InternVL-G from InternVL-C: %s", report.summary())
        return model_g

