"""Stage 3 without the loop: where the ViT comes from, labels, packing invariance, freeze switches and LoRA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sft_helpers import compose_sft

from internvl_train.errors import ConfigError
from internvl_train.engine.freeze import freeze_modules
from internvl_train.models.weights import from_pretrained
from internvl_train.stages.sft import SftStage


def built(cfg, dist):
    stage = SftStage(cfg, dist)
    model = stage.build_model()
    return stage, model


def labelled_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    on = (labels != -100).tolist() + [False]
    spans, start = [], None
    for k, flag in enumerate(on):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            spans.append((start, k))
            start = None
    return spans


def test_only_assistant_answers_and_their_end_marker_carry_labels(sft_cfg, dist):
    stage, model = built(sft_cfg("data.sft.packing=false", "trainer.micro_batch_size=4"), dist)
    batch = next(iter(stage.build_train_loader()))
    tok = stage.tokenizer
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        spans = labelled_spans(labels)
        heads = [k + len(header) for k in range(len(ids)) if ids[k:k + len(header)].tolist() == header]
        assert spans and [s for s, _ in spans] == heads  # every answer, right after its header, nothing else
        for start, end in spans:
            assert torch.equal(labels[start:end], ids[start:end])
            text = tok.decode(ids[start:end].tolist(), skip_special_tokens=False)
            assert text.endswith("<|im_end|>") and "<|im_start|>" not in text and "<IMG_CONTEXT>" not in text
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16 * batch["pixel_values"].shape[0]


def test_the_loader_tiles_with_the_chat_models_knobs(sft_cfg, dist):
    """model.chat is the one home of the tiling: the loader and the exported config take its values."""
    stage, model = built(sft_cfg("model.chat.max_dynamic_patch=3", "model.chat.min_dynamic_patch=2",
                                 "model.chat.use_thumbnail=false", "model.chat.dynamic_image_size=false"), dist)
    s = stage.build_train_loader().encoder.s
    assert (s.min_tiles, s.max_tiles, s.use_thumbnail, s.dynamic, s.image_size) == (2, 3, False, False, 64)
    c = model.config
    assert (c.min_dynamic_patch, c.max_dynamic_patch, c.use_thumbnail, c.dynamic_image_size) == (2, 3, False, False)


def test_packed_and_unpacked_micro_batches_give_the_same_loss(sft_cfg, dist):
    packed_stage, model = built(sft_cfg("data.sft.packing=true", "trainer.micro_batch_size=1"), dist)
    packed = next(iter(packed_stage.build_train_loader()))
    n = packed["num_samples"]
    assert n >= 3 and packed["input_ids"].shape[0] == 1
    plain_stage, _ = built(sft_cfg("data.sft.packing=false", f"trainer.micro_batch_size={n}", run="plain"), dist)
    plain = next(iter(plain_stage.build_train_loader()))
    assert plain["input_ids"].shape[0] == n and plain["num_supervised_tokens"] == packed["num_supervised_tokens"]
    model.eval()
    with torch.no_grad():
        loss_packed = packed_stage.compute_losses(model, packed)["loss"]
        loss_plain = plain_stage.compute_losses(model, plain)["loss"]
    assert torch.allclose(loss_packed, loss_plain, rtol=1e-5, atol=1e-6), (loss_packed, loss_plain)
    # the packing must matter to the model: without per-sample positions the samples would see each other
    from internvl_train.losses.lm import lm_loss
    from internvl_train.models.chat.modeling import chat_forward

    with torch.no_grad():
        leaky = chat_forward(model, packed["input_ids"], packed["pixel_values"],
                             attention_mask=packed["attention_mask"])
        loss_leaky = lm_loss(leaky.logits, packed["labels"], packed["loss_weights"], packed["position_ids"])
    assert not torch.allclose(loss_leaky, loss_plain, rtol=1e-4)


def trainable(model, stage) -> set[str]:
    freeze_modules(stage.frozen_modules(model))
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides, check", [
    ([], lambda names: all(not n.startswith("model.vision_tower") for n in names)
     and any(n.startswith("model.language_model") for n in names) and any("projector" in n for n in names)),
    (["stage.freeze_llm=true"],  # the MLP warm-up: only mlp1 trains
     lambda names: names and all(n.startswith("model.multi_modal_projector") for n in names)),
    (["stage.freeze_llm=true", "stage.freeze_mlp=true", "stage.unfreeze_vision_last_k=1"],
     lambda names: names and all(n.startswith("model.vision_tower.encoder.layer.1.") for n in names)),
    (["stage.freeze_llm=true", "stage.freeze_mlp=true", "stage.lora_llm_rank=4"],
     lambda names: names and all("lora_" in n and "language_model" in n for n in names)),
    (["stage.freeze_vision=false", "stage.freeze_llm=true", "stage.freeze_mlp=true"],
     lambda names: names and all(n.startswith("model.vision_tower") for n in names)),
])
def test_freeze_switches_select_what_trains(sft_cfg, dist, overrides, check):
    stage, model = built(sft_cfg(*overrides), dist)
    assert check(trainable(model, stage))


@pytest.mark.parametrize("part, overrides", [
    ("vision_tower", ["stage.lora_vision_rank=2"]),  # a frozen ViT: its layer scales freeze, its adapters train
    ("language_model", ["stage.lora_llm_rank=4"]),
])
def test_lora_on_a_frozen_part_trains_exactly_its_adapters(sft_cfg, dist, part, overrides):
    stage, model = built(sft_cfg("stage.freeze_llm=true", "stage.freeze_mlp=true", *overrides), dist)
    adapters = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert adapters and all(part in n for n in adapters)
    assert trainable(model, stage) == adapters


def test_lora_export_merges_the_adapters(sft_cfg, dist, tmp_path):
    from internvl_train.inference.prompt import load_chat_for_inference

    stage, model = built(sft_cfg("stage.freeze_llm=true", "stage.lora_llm_rank=4", "stage.lora_vision_rank=2",
                                 "stage.lora_dropout=0"), dist)
    with torch.no_grad():  # make the adapters non-zero (lora_B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = next(iter(stage.build_train_loader()))
    stage.export(model, str(tmp_path / "export"))
    loaded, _ = load_chat_for_inference(tmp_path / "export")
    model.eval()
    with torch.no_grad():
        args = dict(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                    position_ids=batch["position_ids"], use_cache=False)
        ours, theirs = model(**args).logits, loaded(**args).logits
    theirs = theirs[..., :ours.shape[-1]]  # the native export adds a row for the processor's <video> token
    assert not any("lora" in k for k in loaded.state_dict())
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_vision_tower_comes_from_the_previous_stage_export(tmp_path, dist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_sft(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"(?s)^init_from: null and no previous.*stage=contrastive.*generative"):
        SftStage(cfg, dist)
    export = write_tiny_stage1_export(tmp_path / "runs" / "contrastive" / "export")
    stage, model = built(cfg, dist)
    assert stage.init_from == "runs/contrastive/export"
    ours = model.model.vision_tower.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in export.items()), "ViT weights differ from the stage-1 export"


def test_llm_from_the_previous_text_tower_also_for_a_scratch_vit(tmp_path, dist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_sft(tmp_path / "run", ["model.chat.llm_from_text_tower=true", "stage.vision_init=scratch"])
    with pytest.raises(ConfigError, match=r"(?s)^model.chat.llm_from_text_tower: true takes.*stage=contrastive"):
        SftStage(cfg, dist)
    write_tiny_stage1_export(tmp_path / "runs" / "contrastive" / "export")
    stage, model = built(cfg, dist)
    assert stage.init_from is None and stage.text_tower_from == "runs/contrastive/export"
    tower = from_pretrained(tmp_path / "runs" / "contrastive" / "export").text.state_dict()
    llm = model.model.language_model.state_dict()
    assert all(torch.equal(llm[k.removeprefix("model.")], v) for k, v in tower.items()
               if k.startswith("model.layers.")), "LLM layers differ from the stage-1 text tower"
    old_rows = tower["model.embed_tokens.weight"].shape[0]
    assert torch.equal(llm["embed_tokens.weight"][:old_rows], tower["model.embed_tokens.weight"])


def write_tiny_stage1_export(path: Path) -> dict[str, torch.Tensor]:
    """A tiny InternVL-C as stage 1 exports it (weights + tokenizer); returns its ViT state."""
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from data_pipelines.demo import ensure_demo_data
    from internvl_train.app import CONFIG_DIR
    from internvl_train.models.internvl_c.build import build_internvl_c
    from internvl_train.models.weights import save_pretrained

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        model_cfg = compose("config", overrides=["model=tiny"]).model
    tokenizer = AutoTokenizer.from_pretrained(ensure_demo_data().tokenizer_dir)
    torch.manual_seed(7)
    model = build_internvl_c(model_cfg, vocab_size=len(tokenizer))
    save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    return {k: v.clone() for k, v in model.vision.state_dict().items()}
