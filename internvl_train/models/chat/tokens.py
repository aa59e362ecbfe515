"""The chat model's image tokens: the one home of their strings, their official order and how a tokenizer gets
them. Pure Python (no torch): the stage-3 data pipeline imports it too."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"  # one per LLM position an image feature fills
# The official order: ids of these tokens in every InternVL-Chat tokenizer follow from it.
CHAT_SPECIAL_TOKENS = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, "<quad>", "</quad>", "<ref>", "</ref>",
                       "<box>", "</box>")


def add_chat_special_tokens(tokenizer: Any) -> list[str]:
    """Add the InternVL-Chat special tokens in the official order; return the ones that were new (the model
    must grow its embeddings by that many)."""
    vocab = tokenizer.get_vocab()
    new = [t for t in CHAT_SPECIAL_TOKENS if t not in vocab]
    if new and len(new) != len(CHAT_SPECIAL_TOKENS):
        present = [t for t in CHAT_SPECIAL_TOKENS if t in vocab]
        log.warning("tokenizer already has %s; adding only %s", present, new)
    tokenizer.add_tokens(new, special_tokens=True)
    # Named tokens transformers' InternVLProcessor reads (`tokenizer.context_image_token[_id]`); saved with the
    # tokenizer config as `extra_special_tokens`.
    tokenizer._set_model_specific_special_tokens({"start_image_token": IMG_START_TOKEN,
                                                  "end_image_token": IMG_END_TOKEN,
                                                  "context_image_token": IMG_CONTEXT_TOKEN})
    return new


def image_token_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(<img>, </img>, <IMG_CONTEXT>) ids; a tokenizer without them is an error naming the fix."""
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"tokenizer lacks {IMG_START_TOKEN}/{IMG_END_TOKEN}/{IMG_CONTEXT_TOKEN}: call "
                         "internvl_train.models.chat.tokens.add_chat_special_tokens(tokenizer) first")
    return int(ids[0]), int(ids[1]), int(ids[2])


def image_context_token_id(tokenizer: Any) -> int:
    return image_token_ids(tokenizer)[2]
