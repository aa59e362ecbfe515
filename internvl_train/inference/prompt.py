"""Prompts and batched greedy answers for InternVL-Chat models, with exactly the training template and tiling.

A prompt is the training rendering of the conversation cut before the last answer: the data pipeline's
ConversationEncoder renders it (template, system message, BOS rule), `<image>` becomes
`<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`, and images are tiled by the same
`dynamic_preprocess`. The settings are read from the model's config, which the stage-3 export writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import json
from pathlib import Path

import torch
from PIL import Image

from data_pipelines.sft.encode import ConversationEncoder, EncoderSettings, IMAGE_PLACEHOLDER, place_image_tokens
from data_pipelines.sft.templates import TEMPLATES, jinja_chat_template, with_default_system
from data_pipelines.tiling import image_to_tiles, tiles_per_image
from internvl_train.models.chat.tokens import IMG_CONTEXT_TOKEN, image_context_token_id

Turn = tuple[str, str]  # (role, text), role "human" | "gpt"
_NO_LIMIT = 1 << 30
# Prompting fields of the stage-3 export's config.json (official-layout configs keep them as extra keys).
INFERENCE_FIELDS = ("template", "system_message", "min_dynamic_patch", "max_dynamic_patch", "use_thumbnail",
                    "dynamic_image_size")


@dataclass(frozen=True)
class PromptSettings:
    """What a chat model was trained with: template, system message, tile size and tiling rule."""

    template: str
    system_message: Optional[str]
    image_size: int
    num_image_token: int
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    dynamic: bool = True

    @classmethod
    def from_model_config(cls, config: Any) -> PromptSettings:
        size = config.vision_config.image_size
        template = getattr(config, "template", None)
        if not template:
            raise ValueError("the model config names no conversation template (config.template): export it "
                             "with the stage-3 exporter or set config.template")
        return cls(template=template, system_message=getattr(config, "system_message", None),
                   image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                   num_image_token=int(config.image_seq_length),
                   min_tiles=int(getattr(config, "min_dynamic_patch", 1)),
                   max_tiles=int(getattr(config, "max_dynamic_patch", 12)),
                   use_thumbnail=bool(getattr(config, "use_thumbnail", True)),
                   dynamic=bool(getattr(config, "dynamic_image_size", True)))


class ChatPrompter:
    """Conversation + images -> (input_ids, pixel_values) of a generation prompt."""

    def __init__(self, tokenizer: Any, settings: PromptSettings):
        self.tokenizer, self.settings = tokenizer, settings
        self.encoder = ConversationEncoder(tokenizer, EncoderSettings(
            template=settings.template, system_message=settings.system_message,
            num_image_token=settings.num_image_token, image_size=settings.image_size, min_tiles=settings.min_tiles,
            max_tiles=settings.max_tiles, use_thumbnail=settings.use_thumbnail, dynamic=settings.dynamic,
            max_seq_len=_NO_LIMIT, max_tiles_per_sample=_NO_LIMIT))
        self.context_id = image_context_token_id(tokenizer)

    def stop_token_ids(self) -> list[int]:
        """The answer's end marker (`<|im_end|>`, `</s>`) first, then the tokenizer's EOS if different."""
        template = TEMPLATES.get(self.settings.template)
        ids = self.tokenizer.encode(template.assistant_end, add_special_tokens=False)[-1:] if template else []
        return list(dict.fromkeys(i for i in [*ids, self.tokenizer.eos_token_id] if i is not None))

    def chat_template(self) -> Optional[str]:
        """A Jinja chat template rendering these prompts (`add_generation_prompt` = what `build` tokenises,
        image blocks as the processor's `<IMG_CONTEXT>`, which it expands like `build`); for
        template=tokenizer, the tokenizer's own with our default system message."""
        template, system = TEMPLATES.get(self.settings.template), self.settings.system_message
        if template is None:
            own = getattr(self.tokenizer, "chat_template", None)
            return with_default_system(own, system) if own and system is not None else own
        bos = self.tokenizer.bos_token if self.encoder.bos is not None else None
        return jinja_chat_template(template, system, bos, IMG_CONTEXT_TOKEN, IMAGE_PLACEHOLDER)

    def tiles(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        s = self.settings
        hi = tiles_per_image(s.max_tiles, len(images))
        return [image_to_tiles(im, self.encoder.transform, min(s.min_tiles, hi), hi, s.image_size, s.use_thumbnail,
                               dynamic=s.dynamic) for im in images]

    def prompt_text(self, question: str, num_images: int, history: Sequence[Turn] = ()) -> str:
        """The rendered conversation up to the assistant header of the new answer (`<image>` placed as in
        training: inserted before the first question when the text has none)."""
        turns = place_image_tokens([*history, ("human", question), ("gpt", "x")], num_images)
        pieces = self.encoder.render(None, turns)
        last_answer = max(i for i, p in enumerate(pieces) if p.supervised)
        return "".join(p.text for p in pieces[:last_answer])

    def build(self, question: str, images: Sequence[Image.Image] = (), history: Sequence[Turn] = ()
              ) -> tuple[list[int], torch.Tensor]:
        tiles = self.tiles(images)
        text = self.prompt_text(question, len(images), history)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        out = [self.encoder.bos] if self.encoder.bos is not None else []
        image = 0
        for token in ids:
            if token == self.context_id:
                out += [token] * (self.settings.num_image_token * tiles[image].shape[0])
                image += 1
            else:
                out.append(token)
        size = self.settings.image_size
        return out, torch.cat(tiles) if tiles else torch.zeros(0, 3, size, size)


def left_pad(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the left so every prompt ends where generation starts."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


@torch.no_grad()
def generate(model: Any, prompter: ChatPrompter, requests: Sequence[tuple[str, Sequence[Image.Image]]],
             max_new_tokens: int = 32, history: Sequence[Turn] = (), synced_gpus: bool = False) -> list[str]:
    """Greedy answers to (question, images) requests in one batch. `synced_gpus` keeps ZeRO-3 ranks stepping
    together until every rank is done (DeepSpeed gathers parameters collectively)."""
    stop, tok = prompter.stop_token_ids(), prompter.tokenizer
    answers = []
    for row in generate_ids(model, prompter, requests, max_new_tokens, history, synced_gpus):
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        answers.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def generate_ids(model: Any, prompter: ChatPrompter, requests: Sequence[tuple[str, Sequence[Image.Image]]],
                 max_new_tokens: int = 32, history: Sequence[Turn] = (), synced_gpus: bool = False
                 ) -> list[list[int]]:
    """The generated token ids of each request (stop token included, then padding where a row ended early)."""
    built = [prompter.build(q, images, history) for q, images in requests]
    tok = prompter.tokenizer
    ids, mask = left_pad([b[0] for b in built], tok.pad_token_id)
    param = next(model.parameters())
    pixels = torch.cat([b[1] for b in built]).to(param.device, param.dtype)
    out = model.generate(input_ids=ids.to(param.device), attention_mask=mask.to(param.device),
                         pixel_values=pixels if len(pixels) else None, max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=prompter.stop_token_ids(), pad_token_id=tok.pad_token_id,
                         synced_gpus=synced_gpus)
    return out[:, ids.shape[1]:].tolist()


def load_chat_for_inference(path: str | Path, dtype: Optional[torch.dtype] = None) -> tuple[Any, ChatPrompter]:
    """(model in eval mode, prompter) from a chat export in either layout (native or official)."""
    from internvl_train.models.chat.official import load_chat_model
    from internvl_train.models.tokenizer import load_local_tokenizer

    root = Path(path)
    tokenizer = load_local_tokenizer(root)
    model, _ = load_chat_model(root, dtype=dtype)
    raw = json.loads((root / "config.json").read_text())
    for key in INFERENCE_FIELDS:
        if key in raw and raw[key] is not None:
            setattr(model.config, key, raw[key])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), ChatPrompter(tokenizer, PromptSettings.from_model_config(model.config))
