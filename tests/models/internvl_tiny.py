"""Tiny configs shared by the stage-1/2 model tests."""
from __future__ import annotations

from internvl_train.models.config import ModelConfig
from internvl_train.models.internvit.configuration import VisionTowerConfig
from internvl_train.models.internvl_c.configuration import TextTowerConfig
from internvl_train.models.qllama.configuration import QLLaMAConfig

VOCAB = 50


def tiny_config(norm_type: str = "rms_norm", drop_path_rate: float = 0.0, text_layers: int = 4) -> ModelConfig:
    rms = norm_type == "rms_norm"
    return ModelConfig(
        name="tiny-test",
        vision=VisionTowerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, image_size=32,
                                 patch_size=8, norm_type=norm_type, qk_normalization=rms, qkv_bias=not rms,
                                 layer_scale_init=0.1 if rms else 1.0, drop_path_rate=drop_path_rate),
        text=TextTowerConfig(hidden_size=32, num_layers=text_layers, num_heads=4, intermediate_size=64,
                             vocab_size=VOCAB, max_position_embeddings=128),
        qllama=QLLaMAConfig(num_query_tokens=4, cross_attention_every=2),
        embed_dim=16,
        clip_projector_heads=4,
    )
