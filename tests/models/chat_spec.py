"""What the chat-model tests need to write image prompts by hand: the model's tokens per tile, tile size and
`<IMG_CONTEXT>` id (the data pipeline gets the same from internvl_train.inference.prompt.PromptSettings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from internvl_train.models.chat.tokens import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, image_context_token_id


@dataclass(frozen=True)
class ImageSpec:
    context_token_id: int
    num_image_token: int  # LLM tokens per tile (vision tokens plus bridge query tokens)
    tile_size: int

    def image_block(self, num_tiles: int) -> str:
        return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (self.num_image_token * num_tiles) + IMG_END_TOKEN


def image_token_spec(model: Any, tokenizer: Any) -> ImageSpec:
    context_id = image_context_token_id(tokenizer)
    assert context_id == model.config.image_token_id, "the tokenizer is not the one the model was built with"
    return ImageSpec(context_id, int(model.config.image_seq_length), int(model.config.vision_config.image_size[0]))
