"""Build InternVL-G (stage 2): InternVL-C plus QLLaMA, weights from the same sources as InternVL-C."""
from __future__ import annotations

from typing import Any, Optional

from internvl_train.models.internvl_c.build import load_configured_weights
from internvl_train.models.internvl_g.modeling import InternVLG


def build_internvl_g(cfg: Any, vocab_size: Optional[int] = None, init_from: Optional[str] = None) -> InternVLG:
    model = InternVLG(cfg, vocab_size)
    load_configured_weights(model, init_from)
    return model
