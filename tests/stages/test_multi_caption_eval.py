"""Stages 1-2 evaluation on sets with several captions per image (Karpathy-style rows sharing the image key):
each image encoded and captioned once, captioning scored against all its captions, ITM re-ranking with all
of an image's captions as its positives. Fake encoders / models: no network, no tokenizer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.config import EvalSetConfig
from data_pipelines.eval_sets import build_pair_eval_set
from internvl_train.eval.retrieval import gather_retrieval_inputs, retrieval_metrics
from internvl_train.stages import generative_eval
from internvl_train.stages.common import stable_ids
from internvl_train.stages.image_text_eval import image_text_metrics

from tests.data.test_eval_formats import write_karpathy

N_IMAGES, PER_IMAGE = 4, 5


def karpathy_set(tmp_path, batch_size=7, **kw):
    annotation, root = write_karpathy(tmp_path, n_test=N_IMAGES, per_image=PER_IMAGE)
    cfg = EvalSetConfig(name="flickr30k", format="karpathy", annotation=str(annotation), root=str(root),
                        batch_size=batch_size)  # 7: an image's captions cross batch boundaries
    return build_pair_eval_set(cfg, image_size=16, **kw)


def encode_image(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().mean(dim=(2, 3))  # the images have distinct colours


def encode_texts(captions: list[str]) -> torch.Tensor:
    gen = [torch.Generator().manual_seed(len(c) * 1000 + sum(map(ord, c))) for c in captions]
    return torch.stack([torch.randn(3, generator=g) for g in gen])


def test_each_image_is_encoded_once_and_retrieval_is_unchanged(tmp_path):
    eval_set, calls = karpathy_set(tmp_path), []
    counted = lambda pixels: calls.append(pixels.shape[0]) or encode_image(pixels)  # noqa: E731
    got = image_text_metrics(eval_set, {"c": counted}, encode_texts, lambda b: b)
    assert sum(calls) == N_IMAGES
    # before: every row encoded, duplicates dropped by gather_retrieval_inputs
    batches = list(eval_set)
    images = F.normalize(torch.cat([encode_image(b["pixel_values"]) for b in batches]), dim=-1)
    texts = F.normalize(torch.cat([encode_texts(b["captions"]) for b in batches]), dim=-1)
    ids = torch.cat([stable_ids(b["keys"]) for b in batches])
    expected = retrieval_metrics(*gather_retrieval_inputs(images, ids, texts, ids))
    assert {k.split("/", 2)[2]: v for k, v in got.items()} == expected
    assert 0 < expected["i2t_R@1"] < 100 or 0 < expected["t2i_R@1"] < 100  # not a trivial fixture


def test_ranks_split_the_set_by_image(tmp_path):
    eval_set = karpathy_set(tmp_path)
    keys = [[k for b in karpathy_set(tmp_path, rank=r, world_size=2) for k in b["keys"]] for r in (0, 1)]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(k for b in eval_set for k in b["keys"])
    assert len(set(keys[0])) == len(set(keys[1])) == N_IMAGES // 2


# ---- stage-2 captioning --------------------------------------------------------------------------
class PixelModel(nn.Module):
    """vision_tokens: the image's mean colour as one token; itg_logits: zeros (the losses are not checked)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.itg_images = []

    def forward(self, *args, task):
        if task == "vision_tokens":
            return args[0].float().mean(dim=(2, 3))[:, None, :]
        if task == "itg_logits":
            self.itg_images.append(args[0])
            return torch.zeros(*args[1].shape, 5)
        raise AssertionError(task)


def test_captioning_scores_each_image_once_against_all_its_captions(tmp_path, monkeypatch):
    eval_set, captioned, scored = karpathy_set(tmp_path), [], {}
    model = PixelModel()

    def greedy(itg, tokenizer, tokens, prefix, max_new):
        captioned.append(tokens.shape[0])
        return [f"colour {int(t[0, 0] * 100)}" for t in tokens]

    def metrics(predictions, references, *a):
        scored.update(predictions=dict(predictions), references=dict(references))
        return {"bleu4": 0.5, "cider": 1.0, "ptb_tokenizer": 0.0}

    monkeypatch.setattr(generative_eval, "greedy_captions", greedy)
    monkeypatch.setattr(generative_eval, "caption_metrics", metrics)
    monkeypatch.setattr(generative_eval, "constant_caption_baseline", lambda refs, others: {"bleu4": 0.0, "cider": 0.0})
    monkeypatch.setattr(generative_eval, "prefix_token_ids", lambda tok, prefix: torch.tensor([1]))
    monkeypatch.setattr(generative_eval, "prepare_caption_inputs", lambda tok, caps, prefix, n: {
        "input_ids": torch.ones(len(caps), 3, dtype=torch.long), "attention_mask": torch.ones(len(caps), 3)})
    st = SimpleNamespace(caption_eval_images=3, itg_prefix="", caption_max_new_tokens=4, max_text_len=8)
    out = generative_eval.caption_metrics_on(eval_set, model, None, st, lambda b: b)
    keys = [f"{1000 + i}.jpg" for i in range(N_IMAGES)]
    assert sum(captioned) == 3 and out["flickr30k/caption/n_images"] == 3.0
    assert sorted(scored["predictions"]) == keys[:3]
    assert scored["references"] == {keys[i]: [f"image {i} caption {j}" for j in range(PER_IMAGE)] for i in range(3)}
    # ITG: every caption row of a captioned image paired with its own image, and with another one
    for own, other in zip(model.itg_images[0::2], model.itg_images[1::2]):
        assert (own != other).any(dim=-1).all()


# ---- stage-2 ITM re-ranking ----------------------------------------------------------------------
class FakeSet:
    """Batches of (image index as its 'pixels', caption 'i j'), PER_IMAGE rows per image, crossing batches."""
    name, classnames, templates = "toy", None, None

    def __iter__(self):
        rows = [(i, f"{i} {j}") for i in range(N_IMAGES) for j in range(PER_IMAGE)]
        for start in range(0, len(rows), 7):
            part = rows[start:start + 7]
            yield {"pixel_values": torch.tensor([[float(i)] for i, _ in part]), "captions": [c for _, c in part],
                   "keys": [f"img{i}" for i, _ in part], "labels": torch.full((len(part),), -1)}


G_IMAGES = F.normalize(torch.randn(N_IMAGES, 6, generator=torch.Generator().manual_seed(0)), dim=-1)


def g_text(i: int, j: int) -> torch.Tensor:  # noisy: G alone retrieves imperfectly
    noise = torch.randn(6, generator=torch.Generator().manual_seed(100 + 10 * i + j))
    return F.normalize(G_IMAGES[i] + 0.9 * noise, dim=-1)


class ItmModel(nn.Module):
    """ITM prefers the right pairs; among an image's captions it prefers higher j (no ties, and caption j=0,
    the row of the image's first sample, is never its best-scoring caption)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, *args, task):
        if task == "vision_tokens":
            return args[0][:, None, :]  # [B, 1, 1]: the image index
        if task == "encode_image_g":
            return G_IMAGES[args[0][:, 0, 0].long()]
        if task == "encode_text":
            return torch.stack([g_text(int(i) - 1, int(j) - 1) for i, j in args[0][:, :2]])
        if task == "itm_logits":
            image, text = args[0][:, 0, 0].long(), args[1][:, 0] - 1
            match = (image == text).float() * 10 + 0.1 * (args[1][:, 1] - 1).float()
            return torch.stack([torch.zeros_like(match), match], dim=-1)
        raise AssertionError(task)


def caption_ids(tokenizer, captions, prefix, max_len, pad_to_max_length=False):
    ids = torch.tensor([[int(w) + 1 for w in c.split()] + [0, 0] for c in captions])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def test_itm_rerank_counts_every_caption_of_an_image_as_its_positive(monkeypatch):
    monkeypatch.setattr(generative_eval, "prepare_caption_inputs", caption_ids)
    st = SimpleNamespace(itm_rerank_k=3, caption_prefix="", max_text_len=8)
    got = generative_eval.itm_rerank_metrics(FakeSet(), ItmModel(), None, st, lambda b: b)
    texts = torch.stack([g_text(i, j) for i in range(N_IMAGES) for j in range(PER_IMAGE)])
    text_to_image = torch.arange(N_IMAGES).repeat_interleave(PER_IMAGE)
    sim = G_IMAGES @ texts.T
    # a perfect ITM finds a positive at rank 0 whenever G's top 3 holds one
    i2t = (text_to_image[sim.topk(3, dim=1).indices] == torch.arange(N_IMAGES)[:, None]).any(dim=1)
    t2i = (sim.T.topk(3, dim=1).indices == text_to_image[:, None]).any(dim=1)
    assert got == pytest.approx({"i2t_R@1": 100.0 * i2t.float().mean().item(),
                                 "t2i_R@1": 100.0 * t2i.float().mean().item()})
    assert got["i2t_R@1"] > 0 and got["t2i_R@1"] < 100  # the fixture exercises both outcomes


# ---- results tables ------------------------------------------------------------------------------
def test_results_are_logged_as_paper_style_tables_one_per_task(caplog):
    from internvl_train.stages.image_text_eval import log_results_tables

    results = {"flickr30k/c/i2t_R@1": 80.0, "flickr30k/g/t2i_R@1": 70.0, "flickr30k/c/mean_recall": 75.0,
               "imagenet/c/zeroshot_top1": 60.0, "imagenet/c/zeroshot_top1_chance": 0.1,
               "coco_caption/caption/cider": 1.2, "coco_caption/caption/n_images": 8.0,
               "vqav2/vqa_accuracy": 54.2, "vqav2/majority_baseline": 10.0, "vqav2/n_questions": 500.0}
    with caplog.at_level("INFO", logger="internvl_train.stages.image_text_eval"):
        log_results_tables(results, rank=1)
        assert not caplog.records
        log_results_tables(results)
    tables = {r.getMessage().split(" results:")[0]: r.getMessage() for r in caplog.records}
    assert set(tables) == {"retrieval", "zero-shot", "captioning", "VQA"}
    assert "VQAv2 accuracy" in tables["VQA"] and "54.2" in tables["VQA"] and "n_questions" not in tables["VQA"]
    assert "Flickr30K I->T R@1" in tables["retrieval"] and "Flickr30K T->I R@1" in tables["retrieval"]
    assert "| InternVL-C | 80.0 |" in tables["retrieval"] and "Flickr30K mean recall" in tables["retrieval"]
    assert "ImageNet-1K top-1" in tables["zero-shot"] and "chance" not in tables["zero-shot"]
    assert "COCO Caption CIDEr" in tables["captioning"] and "120.0" in tables["captioning"]
