"""Tiny generated ingredients for SFT tests and smoke runs: a byte-level BPE tokenizer trained on the fly
and small synthetic images. Nothing is downloaded."""
from __future__ import annotations

import os
from typing import Iterable, Optional

from PIL import Image

from internvl_train.models.chat.tokens import add_chat_special_tokens

CHAT_SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "What colour is the shape? The shape is red. Describe the image in detail.",
    "A small blue circle at the top left. A large green square at the bottom right.",
    "USER: ASSISTANT: system user assistant yes no one two three four five",
]


def build_byte_bpe_tokenizer(texts: Iterable[str] = (), vocab_size: int = 400, add_bos: bool = True,
                             save_dir: Optional[str] = None):
    """A transformers fast tokenizer (byte-level BPE) with the chat special tokens and the image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator([*_CORPUS, *texts], trainer=trainer)
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    add_chat_special_tokens(tok)
    if save_dir:
        tok.save_pretrained(save_dir)
    return tok


def write_color_images(folder: str, sizes: Iterable[tuple[int, int]]) -> list[str]:
    """One solid-colour PNG per size (colour varies with the index), returns file names."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"img_{i:04d}.png"
        Image.new("RGB", (w, h), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(os.path.join(folder, name))
        names.append(name)
    return names


def write_meta_dataset(folder: str, datasets: dict[str, list[dict]], **entry_options: dict) -> str:
    """Write one JSONL annotation per dataset and an InternVL-Chat meta JSON; returns the meta path.
    `entry_options[name]` adds meta fields (repeat_time, max_dynamic_patch) to that dataset."""
    import json

    meta = {}
    for name, records in datasets.items():
        with open(os.path.join(folder, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        meta[name] = {"root": ".", "annotation": f"{name}.jsonl", "repeat_time": 1, "data_augment": False,
                      **entry_options.get(name, {})}
    path = os.path.join(folder, "meta.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return path


def qa_record(image: str | list[str] | None, exchanges: list[tuple[str, str]]) -> dict:
    """A conversation record in the InternVL-Chat / LLaVA shape."""
    conversations = []
    for q, a in exchanges:
        conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"conversations": conversations, **({"image": image} if image is not None else {})}
