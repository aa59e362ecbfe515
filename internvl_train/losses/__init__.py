"""Losses of the three stages: ITC (open_clip ClipLoss), ITM, ITG, stage-3 LM (contrastive accumulation, a
training-step technique, is stages/contrastive_accumulation.py)."""
from .combine import combine_losses
from .itc import MAX_LOGIT_SCALE, build_clip_loss, clamp_logit_scale_, itc_loss, scaled_logit_scale
from .itg import itg_labels, itg_loss, next_token_ce
from .labels import IGNORE_INDEX
from .itm import ItmNegatives, ItmOutput, itm_loss, sample_itm_negatives
from .lm import lm_loss, lm_loss_terms, token_loss_weights

__all__ = [
    "IGNORE_INDEX", "ItmNegatives", "ItmOutput", "MAX_LOGIT_SCALE", "build_clip_loss",
    "clamp_logit_scale_", "combine_losses", "itc_loss", "itg_labels",
    "itg_loss", "itm_loss", "lm_loss", "lm_loss_terms", "next_token_ce", "sample_itm_negatives",
    "scaled_logit_scale", "token_loss_weights",
]
