"""The planner's stand-in tokenizer, built in code, for a recipe whose tokenizer files are not on this machine
(the tests build their tiny chat models with it too): nothing is downloaded.

Byte-level BPE without merges: every UTF-8 byte is a token, so any text round-trips, plus the chat-template
control tokens as special tokens."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TINY_CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(TINY_CONTROL_TOKENS)}
    vocab.update({ch: len(TINY_CONTROL_TOKENS) + i for i, ch in enumerate(byte_chars)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    return tokenizer
