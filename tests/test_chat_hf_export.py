"""The stage-3 native export used from plain transformers: its chat_template renders exactly the prompts our chat
builds (every template), its generation_config ends at the template's turn end, and
processor.apply_chat_template + model.generate answers as `python -m internvl_train.chat`."""
from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, GenerationConfig

from data_pipelines.sft.templates import TEMPLATES, TOKENIZER_TEMPLATE
from internvl_train.inference.prompt import ChatPrompter, PromptSettings, generate_ids, load_chat_for_inference

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "stages"))
from sft_helpers import tiny_chat_model  # noqa: E402

TURN_END = {"internvl2_5": "<|im_end|>", "internlm2-chat": "<|im_end|>", "Hermes-2": "<|im_end|>",
            "vicuna_v1": "</s>"}
# Every template with the demo's system message, and one with the template's own default system message.
EXPORTS = {name: [f"model.chat.template={name}"] for name in TEMPLATES}
EXPORTS["internvl2_5/default-system"] = ["model.chat.template=internvl2_5", "data.sft.system_message=null"]
HISTORY = [("human", "What is in the image?"), ("gpt", "A red shape.")]
QUESTION = "What color is it?"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained stage-3 exports, one per template, tiled dynamically (up to 4 tiles + thumbnail)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for key, overrides in EXPORTS.items():
        run = root / key.replace("/", "-")
        stage, model = tiny_chat_model(run / "run", [*overrides, "model.chat.max_dynamic_patch=4"])
        stage.export(model, str(run / "export"))
        out[key] = run / "export"
    return out


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (96, 64), (220, 30, 30)), Image.new("RGB", (64, 160), (20, 200, 40))]


def messages(question, history=(), system=None, images=()) -> list[dict]:
    """HF chat messages of our (role, text) history + a question; images as content items of the first."""
    turns = [*history, ("human", question)]
    out = [{"role": "system", "content": system}] if system is not None else []
    for i, (role, text) in enumerate(turns):
        content = [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}] \
            if i == 0 and images else text
        out.append({"role": "user" if role == "human" else "assistant", "content": content})
    return out


def processor_kwargs(prompter, **extra) -> dict:
    """The processor tokenises with the tokenizer's specials unless the prompt starts with BOS: a template
    without BOS on a BOS-adding tokenizer must say so (as docs/chat.md tells). A new dict each call: the
    processor writes into it."""
    return {**({} if prompter.encoder.bos is not None else {"add_special_tokens": False}), **extra}


@pytest.mark.parametrize("key", EXPORTS)
def test_chat_template_renders_our_text_prompts(exports, key):
    tok = AutoTokenizer.from_pretrained(exports[key])
    _, prompter = load_chat_for_inference(exports[key])
    bos = tok.bos_token if prompter.encoder.bos is not None else ""
    for history in ((), HISTORY):
        chat = messages(QUESTION, history)
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert text == bos + prompter.prompt_text(QUESTION, 0, history)
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert ids == prompter.build(QUESTION, [], history)[0]
    # a conversation's own system message replaces the default, as in training records
    rendered = tok.apply_chat_template(messages(QUESTION, system="Be brief."), tokenize=False,
                                       add_generation_prompt=True)
    template = TEMPLATES[prompter.settings.template]
    assert rendered.startswith(bos + template.system_prefix + "Be brief." + template.system_suffix)


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_tokenizer_template_keeps_the_tokenizers_own_with_our_system_message(exports):
    """template=tokenizer: the tokenizer's own chat_template, defaulting to the system message training used."""
    tok = AutoTokenizer.from_pretrained(exports["internvl2_5"])
    tok.chat_template = CHATML
    settings = PromptSettings(template=TOKENIZER_TEMPLATE, system_message="Be brief.", image_size=64,
                              num_image_token=16)
    prompter = ChatPrompter(tok, settings)
    exported = copy.deepcopy(tok)
    exported.chat_template = prompter.chat_template()
    for history in ((), HISTORY):
        ids = exported.apply_chat_template(messages(QUESTION, history), add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
        assert ids == prompter.build(QUESTION, [], history)[0]
    assert ChatPrompter(tok, replace(settings, system_message=None)).chat_template() == CHATML


@pytest.mark.parametrize("key", EXPORTS)
def test_processor_chat_template_builds_our_image_prompts(exports, key, images):
    processor = AutoProcessor.from_pretrained(exports[key])
    _, prompter = load_chat_for_inference(exports[key])
    one = processor.apply_chat_template(messages(QUESTION, HISTORY, images=images[:1]), add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt",
                                        processor_kwargs=processor_kwargs(prompter))
    ids, pixels = prompter.build(QUESTION, images[:1], HISTORY)
    assert pixels.shape[0] == 3  # two tiles + thumbnail: the dynamic tiling is exercised
    assert one["input_ids"][0].tolist() == ids
    torch.testing.assert_close(one["pixel_values"], pixels, atol=1e-5, rtol=0)
    # several images: `Image-k:` lines, each image's tile budget divided as in training
    budget = 4 // len(images)
    two = processor.apply_chat_template(messages(QUESTION, images=images), add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="pt",
                                        processor_kwargs=processor_kwargs(prompter, max_patches=budget))
    ids, pixels = prompter.build(QUESTION, images)
    assert two["input_ids"][0].tolist() == ids
    torch.testing.assert_close(two["pixel_values"], pixels, atol=1e-5, rtol=0)
    # our `<image>` placeholder in the text stands for the image, as in the CLI's questions (the rendered
    # text already holds the BOS the template wants)
    text = processor.apply_chat_template(messages("<image>\n" + QUESTION), add_generation_prompt=True)
    placed = processor(text=text, images=images[:1], return_tensors="pt", add_special_tokens=False)
    assert placed["input_ids"][0].tolist() == prompter.build("<image>\n" + QUESTION, images[:1])[0]


@pytest.mark.parametrize("key", EXPORTS)
def test_generation_config_ends_at_the_turn_end(exports, key):
    tok = AutoTokenizer.from_pretrained(exports[key])
    turn_end = tok.convert_tokens_to_ids(TURN_END[key.split("/")[0]])
    expected = turn_end if turn_end == tok.eos_token_id else [turn_end, tok.eos_token_id]
    for layout in (exports[key], exports[key] / "official"):
        config = GenerationConfig.from_pretrained(layout)
        assert config.eos_token_id == expected and config.pad_token_id == tok.pad_token_id
        assert not config.do_sample
    assert AutoModelForImageTextToText.from_pretrained(exports[key]).generation_config.eos_token_id == expected


def end_turns_early(stage, model, question: str, image: Image.Image) -> None:
    """An untrained model never ends its turn: make the turn end win wherever its third answer token would
    (its output row = 1.05 x that token's), so there is a turn end to stop at."""
    prompter = stage.prompter(model.eval())
    third = generate_ids(model, prompter, [(question, [image])], max_new_tokens=3)[0][2]
    with torch.no_grad():
        model.lm_head.weight[prompter.stop_token_ids()[0]] = 1.05 * model.lm_head.weight[third]


@pytest.fixture(scope="module")
def stopping_export(tmp_path_factory, images) -> Path:
    root = tmp_path_factory.mktemp("stop")
    stage, model = tiny_chat_model(root / "run")
    end_turns_early(stage, model, QUESTION, images[0])
    stage.export(model, str(root / "export"))
    return root / "export"


def test_plain_generate_answers_like_our_chat_and_stops_at_the_turn_end(stopping_export, images, tmp_path, capsys):
    from internvl_train.chat import main

    limit = 12
    processor = AutoProcessor.from_pretrained(stopping_export)
    plain = AutoModelForImageTextToText.from_pretrained(stopping_export).eval()
    inputs = processor.apply_chat_template(messages(QUESTION, images=images[:1]), add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        theirs = plain.generate(**inputs, max_new_tokens=limit)[0, inputs["input_ids"].shape[1]:].tolist()
    model, prompter = load_chat_for_inference(stopping_export)
    ours = generate_ids(model, prompter, [(QUESTION, images[:1])], max_new_tokens=limit)[0]
    assert theirs == ours
    assert 1 < len(theirs) < limit and theirs[-1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    image = tmp_path / "red.png"
    images[0].save(image)
    assert main(["--model", str(stopping_export), "--image", str(image), "--question", QUESTION,
                 "--max-new-tokens", str(limit)]) == 0
    answer = processor.decode(theirs, skip_special_tokens=True).strip()
    assert answer and capsys.readouterr().out.splitlines()[-1] == answer
