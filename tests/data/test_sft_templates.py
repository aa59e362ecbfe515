"""Templates render the exact official strings; labels cover assistant text + end marker only; a
template/tokenizer mismatch is an error with a reason, never an all-masked sample."""
import pytest
import torch

from tests.data.sft_fixtures import build_byte_bpe_tokenizer, qa_record, write_color_images
from data_pipelines.sft.encode import ConversationEncoder, EncoderSettings
from data_pipelines.skip import SkipSample
from internvl_train.losses.labels import IGNORE_INDEX
from data_pipelines.sft.source import DatasetSpec
from data_pipelines.sft.templates import TEMPLATES, VICUNA_SYSTEM, TemplateMismatch

NIT = 4  # image tokens per tile
EXCHANGES = [("<image>\nWhat colour is it?", "It is red."), ("And the shape?", "A small circle, top left.")]


@pytest.fixture(scope="module")
def tok():
    return build_byte_bpe_tokenizer()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    write_color_images(str(folder), [(56, 28), (28, 28)])
    return DatasetSpec("t", str(folder), "none")


def settings(template, **kw):
    base = dict(template=template, system_message=None, num_image_token=NIT, image_size=28, min_tiles=1,
                max_tiles=6, use_thumbnail=True, dynamic=True, max_seq_len=4096, max_tiles_per_sample=48)
    return EncoderSettings(**{**base, **kw})


def supervised_spans(tok, sample):
    spans, cur = [], []
    for t, lab in zip(sample.input_ids.tolist(), sample.labels.tolist()):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            spans, cur = spans + [cur], []
    return [tok.decode(s, skip_special_tokens=False) for s in spans + ([cur] if cur else [])]


def expected_text(template, img_block):
    q1, q2 = EXCHANGES[0][0].replace("<image>", img_block), EXCHANGES[1][0]
    a1, a2 = EXCHANGES[0][1], EXCHANGES[1][1]
    if template == "vicuna_v1":
        return f"<s>{VICUNA_SYSTEM} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
    t = TEMPLATES[template]
    nl = "\n" if template == "internvl2_5" else ""
    bos = "<s>" if template in ("internvl2_5", "internlm2-chat") else ""  # internvl2_5: tokenizer adds BOS
    return (f"{bos}<|im_start|>system\n{t.default_system}<|im_end|>{nl}"
            f"<|im_start|>user\n{q1}<|im_end|>{nl}<|im_start|>assistant\n{a1}<|im_end|>{nl}"
            f"<|im_start|>user\n{q2}<|im_end|>{nl}<|im_start|>assistant\n{a2}<|im_end|>{nl}")


@pytest.mark.parametrize("template", ["internvl2_5", "internlm2-chat", "Hermes-2", "vicuna_v1"])
def test_exact_strings_and_label_mask(tok, spec, template):
    enc = ConversationEncoder(tok, settings(template))
    sample = enc.encode(qa_record("img_0000.png", EXCHANGES), spec)  # 56x28 -> 2x1 grid + thumbnail
    assert sample.num_tiles == [3] and sample.pixel_values.shape == (3, 3, 28, 28)
    img_block = "<img>" + "<IMG_CONTEXT>" * (NIT * 3) + "</img>"
    assert tok.decode(sample.input_ids.tolist(), skip_special_tokens=False) == expected_text(template, img_block)
    end = "</s>" if template == "vicuna_v1" else "<|im_end|>"
    lead = " " if template == "vicuna_v1" else ""
    assert supervised_spans(tok, sample) == [lead + a + end for _, a in EXCHANGES]
    assert sample.labels[0] == IGNORE_INDEX


def test_system_message_override_and_text_only(tok, spec):
    enc = ConversationEncoder(tok, settings("Hermes-2", system_message="Be brief."))
    sample = enc.encode(qa_record(None, [("Hi", "Hello.")]), spec)
    assert tok.decode(sample.input_ids.tolist(), skip_special_tokens=False) == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello.<|im_end|>")
    assert sample.pixel_values.shape[0] == 0 and sample.num_tiles == []


def test_multi_image_gets_image_n_prefix_and_split_budget(tok, spec):
    enc = ConversationEncoder(tok, settings("internvl2_5", max_tiles=2))
    sample = enc.encode(qa_record(["img_0000.png", "img_0001.png"], [("Compare.", "Same.")]), spec)
    text = tok.decode(sample.input_ids.tolist(), skip_special_tokens=False)
    assert "Image-1: <img>" in text and "Image-2: <img>" in text
    assert sample.num_tiles == [1, 1]  # budget max(1, 2 // 2) = 1 tile each
    assert int((sample.input_ids == tok.convert_tokens_to_ids("<IMG_CONTEXT>")).sum()) == NIT * 2


def test_tokenizer_chat_template(tok, spec):
    tok = build_byte_bpe_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}")
    sample = ConversationEncoder(tok, settings("tokenizer")).encode(qa_record(None, EXCHANGES[1:]), spec)
    assert supervised_spans(tok, sample) == [EXCHANGES[1][1] + "<|im_end|>"]
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(TemplateMismatch) as err:
        ConversationEncoder(tok, settings("tokenizer")).encode(qa_record(None, EXCHANGES[1:]), spec)
    assert err.value.reason == "chat_template_content_missing"


def test_markers_not_single_tokens_is_a_mismatch(spec):
    bare = _tokenizer_without_chatml()  # <|im_start|>/<|im_end|> split into byte pieces
    with pytest.raises(TemplateMismatch) as err:
        ConversationEncoder(bare, settings("internvl2_5")).encode(qa_record(None, EXCHANGES[1:]), spec)
    assert err.value.reason == "marker_not_single_token"
    # vicuna only needs </s>, which this tokenizer has: it works.
    sample = ConversationEncoder(bare, settings("vicuna_v1")).encode(qa_record(None, EXCHANGES[1:]), spec)
    assert sample.num_supervised > 0


def _tokenizer_without_chatml():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from internvl_train.models.chat.tokens import add_chat_special_tokens

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(["hello world"], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    add_chat_special_tokens(tok)
    return tok


def test_bad_samples_raise_reasons(tok, spec):
    enc = ConversationEncoder(tok, settings("internvl2_5"))
    cases = {
        "bad_image": qa_record("missing.png", [("q", "a")]),
        "image_placeholder_mismatch": qa_record("img_0000.png", [("<image> <image> q", "a")]),
        "bad_conversation": {"conversations": [{"from": "gpt", "value": "a"}]},
    }
    for reason, record in cases.items():
        with pytest.raises(SkipSample) as err:
            enc.encode(record, spec)
        assert err.value.reason == reason


def test_truncation_drops_whole_trailing_exchanges(tok, spec):
    record = qa_record(["img_0000.png", "img_0001.png"],
                       [("<image>\nFirst?", "One."), ("<image>\nSecond?", "Two."), ("Third?", "Three.")])
    full = ConversationEncoder(tok, settings("internvl2_5")).encode(record, spec)
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    lengths = []
    for max_len in range(40, len(full.input_ids) + 1, 3):
        enc = ConversationEncoder(tok, settings("internvl2_5", max_seq_len=max_len))
        try:
            s = enc.encode(record, spec)
        except SkipSample as err:
            assert err.reason == "too_long"
            continue
        assert len(s.input_ids) <= max_len
        ids = s.input_ids.tolist()
        assert ids.count(ctx) == NIT * sum(s.num_tiles) == NIT * s.pixel_values.shape[0]
        assert ids.count(tok.convert_tokens_to_ids("<img>")) == len(s.num_tiles)
        spans = supervised_spans(tok, s)
        assert spans == [a + "<|im_end|>" for a in ("One.", "Two.", "Three.")[: len(spans)]]
        assert s.truncated == (len(spans) < 3)
        lengths.append(len(spans))
    assert sorted(set(lengths)) == [1, 2, 3]


def test_real_token_id_zero_is_not_padding(tok, spec):
    from data_pipelines.sft.packing import collate_rows

    assert tok.bos_token_id == 0 and tok.pad_token_id != 0
    enc = ConversationEncoder(tok, settings("internlm2-chat"))
    a = enc.encode(qa_record(None, [("Hi", "Yo.")]), spec)
    b = enc.encode(qa_record(None, [("Hello there, how are you", "Fine.")]), spec)
    batch = collate_rows([[a], [b]], tok.pad_token_id, "token", 28)
    assert batch["input_ids"][0, 0] == 0 and batch["attention_mask"][0, 0] == 1
    pad = batch["attention_mask"][0] == 0
    assert pad.any() and torch.all(batch["input_ids"][0][pad] == tok.pad_token_id)


def test_token_straddling_a_supervised_boundary_is_a_mismatch(tok):
    from data_pipelines.sft.templates import Piece

    enc = ConversationEncoder(tok, settings("Hermes-2"))
    pieces = [Piece("ab", False, 0), Piece("cd", True, 0)]
    assert enc._labels(pieces, [1, 2, 3, 4], [(0, 1), (1, 2), (2, 3), (3, 4)]) == [IGNORE_INDEX, IGNORE_INDEX, 3, 4]
    with pytest.raises(TemplateMismatch) as err:
        enc._labels(pieces, [1, 2, 3], [(0, 1), (1, 3), (3, 4)])  # token "bc" crosses the boundary
    assert err.value.reason == "token_straddles_supervised_span"


def test_loader_counts_template_mismatches_and_stops(tmp_path):
    from tests.data.sft_fixtures import write_meta_dataset
    from data_pipelines.sft import SftDataConfig, build_sft_loader

    meta = write_meta_dataset(str(tmp_path), {"d": [qa_record(None, [("q", "a")])] * 6})
    cfg = SftDataConfig(meta_path=meta, num_workers=0, max_consecutive_failures=4)
    loader = build_sft_loader(cfg, _tokenizer_without_chatml(), 0, 1, 1, 0, NIT, 28, template="internvl2_5")
    with pytest.raises(RuntimeError, match="marker_not_single_token"):
        loader.next_batch()
    assert loader.metrics()["data/sft/skipped/marker_not_single_token"] == 4


def test_qwen_style_chat_template_with_injected_system(spec):
    tok = build_byte_bpe_tokenizer()
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    sample = ConversationEncoder(tok, settings("tokenizer")).encode(qa_record("img_0001.png", EXCHANGES), spec)
    text = tok.decode(sample.input_ids.tolist(), skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<img>")
    assert supervised_spans(tok, sample) == [a + "<|im_end|>" for _, a in EXCHANGES]


@pytest.mark.parametrize("template", ["internvl2_5", "internlm2-chat", "Hermes-2", "vicuna_v1"])
def test_demo_tokenizer_speaks_every_template(tmp_path_factory, spec, template):
    """The demo tokenizer (pad id 0, BOS added by its post-processor) with the image tokens added."""
    from transformers import AutoTokenizer

    from data_pipelines.demo.tokenizer import build_tokenizer
    from internvl_train.models.chat.tokens import add_chat_special_tokens

    folder = tmp_path_factory.getbasetemp() / "demo_tok"
    if not folder.exists():
        build_tokenizer(["a red circle", "a blue square"], str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(add_chat_special_tokens(tok)) == 9 and tok.pad_token_id == 0
    sample = ConversationEncoder(tok, settings(template, system_message="Be brief.")).encode(
        qa_record("img_0000.png", EXCHANGES), spec)
    end, lead = ("</s>", " ") if template == "vicuna_v1" else ("<|im_end|>", "")
    assert supervised_spans(tok, sample) == [lead + a + end for _, a in EXCHANGES]
    assert (sample.input_ids[0] == tok.bos_token_id) == (template != "Hermes-2")


def test_chat_template_that_raises_is_a_mismatch(spec):
    tok = build_byte_bpe_tokenizer()
    tok.chat_template = "{% if messages|length > 1 %}{{ raise_exception('roles must alternate') }}{% endif %}x"
    with pytest.raises(TemplateMismatch) as err:
        ConversationEncoder(tok, settings("tokenizer")).encode(qa_record(None, EXCHANGES[1:] * 2), spec)
    assert err.value.reason == "chat_template_error"
