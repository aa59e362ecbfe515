"""prepare_caption_inputs: InternVL-C tokenisation (prefix, EOS, pad id, explicit mask) and EOS pooling."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from internvl_train.models.internvl_c.text_tower import gather_last_token, prepare_caption_inputs

WORDS = ["<unk>", "<s>", "</s>", "summarize:", "a", "red", "cat", "dog", "on", "mat"]


def _tokenizer(pad: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    extra = {"pad_token": "</s>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **extra)


def test_prefix_eos_padding_and_explicit_mask():
    out = prepare_caption_inputs(_tokenizer(pad=False), ["a red cat", "zebra"], prefix="summarize: ")
    assert out["input_ids"].tolist() == [[1, 3, 4, 5, 6, 2], [1, 3, 0, 2, 0, 0]]
    # "zebra" is <unk> = id 0, a real token: the mask says so, padding uses id 0 too (official pad id)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


def test_truncation_keeps_eos_and_uses_the_tokenizer_pad_id():
    out = prepare_caption_inputs(_tokenizer(pad=True), ["a red cat on a mat", "dog"], prefix="summarize: ",
                                 max_length=5, pad_to_max_length=True)
    assert out["input_ids"].tolist() == [[1, 3, 4, 5, 2], [1, 3, 7, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_embedding_is_read_at_the_last_real_token_for_any_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert gather_last_token(hidden, right).flatten().tolist() == [2.0, 7.0]
    assert gather_last_token(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_tokenizer_loads_from_a_local_directory_only(tmp_path):
    from internvl_train.models.tokenizer import load_local_tokenizer

    _tokenizer(pad=False).save_pretrained(tmp_path)
    tok = load_local_tokenizer(tmp_path)
    assert tok("summarize: a cat")["input_ids"] == [1, 3, 4, 6] and tok.eos_token_id == 2



def test_a_directory_without_a_tokenizer_is_named_not_downloaded(tmp_path):
    from internvl_train.models.tokenizer import load_local_tokenizer

    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no tokenizer_config.json"):
        load_local_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_local_tokenizer("meta-llama/Llama-2-7b-hf")  # a Hub id is not a local directory