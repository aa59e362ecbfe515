"""`python -m internvl_train.eval EXPORT SPEC...`: a tiny stage-1 export evaluated on generated Karpathy and
ImageNet-folder fixtures, end to end in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.test_eval_formats import write_imagenet_val, write_karpathy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
REPO = Path(__file__).resolve().parents[2]


def test_specs_parse_to_eval_set_configs(tmp_path):
    from internvl_train.errors import ConfigError
    from internvl_train.eval.__main__ import parse_spec

    annotation, root = write_karpathy(tmp_path)
    cfg = parse_spec(f"karpathy:{annotation}:{root}")
    assert (cfg.name, cfg.format, cfg.annotation, cfg.root, cfg.split) == \
        ("flickr30k", "karpathy", str(annotation), str(root), "test")
    assert parse_spec(f"karpathy:{annotation}:{root}:train").split == "train"
    kv = parse_spec(f"name=f30k,format=karpathy,annotation={annotation},root={root},batch_size=3")
    assert (kv.name, kv.batch_size) == ("f30k", 3)
    assert parse_spec(f"imagenet:{root}").format == "imagenet_folder"
    with pytest.raises(ConfigError, match="needs root|takes ANNOTATION:ROOT"):
        parse_spec(f"karpathy:{annotation}")
    with pytest.raises(ConfigError, match="unknown field"):
        parse_spec(f"format=karpathy,annotaton={annotation}")
    with pytest.raises(ConfigError, match="FORMAT one of"):
        parse_spec(f"flickr:{annotation}")


def test_evaluator_on_a_stage1_export_prints_tables_and_writes_results(tmp_path):
    from generative_helpers import make_stage1_export

    export = make_stage1_export(tmp_path / "stage1")
    annotation, root = write_karpathy(tmp_path / "flickr")
    imagenet = write_imagenet_val(tmp_path / "imagenet")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "internvl_train.eval", str(export), f"karpathy:{annotation}:{root}",
           f"format=imagenet_folder,root={imagenet},templates=simple", "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flickr30k (karpathy): 3 images, 15 captions" in proc.stdout
    assert "imagenet (imagenet_folder): 6 images, 6 captions" in proc.stdout
    retrieval = proc.stdout.split("\nretrieval\n")[1].split("\nzero-shot\n")[0]
    assert "| InternVL-C |" in retrieval and "Flickr30K I->T R@1" in retrieval and "ImageNet-1K" in retrieval
    zero_shot = proc.stdout.split("\nzero-shot\n")[1]
    assert "ImageNet-1K top-1" in zero_shot and "Flickr30K" not in zero_shot
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["eval_sets"]["flickr30k"]["n_images"] == 3 and record["stage"] == "eval"
    assert set(record["metrics"]) >= {"flickr30k/c/i2t_R@1", "flickr30k/c/t2i_R@10", "imagenet/c/zeroshot_top1"}
    assert record["metrics"]["imagenet/c/zeroshot_top5_chance"] == pytest.approx(0.5)


def test_evaluator_rejects_a_bad_spec_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "internvl_train.eval", str(tmp_path), "karpathy:/nope.json:/nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "file not found: /nope.json" in proc.stderr


def test_evaluator_on_a_chat_export_scores_vqa_as_the_stage_does(tmp_path):
    """vqa: specs on a tiny stage-3 export: the table and results.jsonl carry the same accuracy as scoring the
    export's own greedy answers (eval.vqa_generate), and a mixed call is refused."""
    import torch
    from PIL import Image
    from sft_helpers import tiny_chat_model

    from internvl_train.eval.vqa_jsonl import evaluate_chat_export, read_questions

    torch.set_num_threads(1)
    stage, model = tiny_chat_model(tmp_path / "run")
    export = tmp_path / "export"
    stage.export(model, str(export))
    Image.new("RGB", (64, 48), (220, 30, 30)).save(tmp_path / "red.png")
    questions = tmp_path / "colours.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "image": "red.png", "answers": a}) + "\n"
                                 for q, a in (("What color is the shape?", ["red"]), ("Is it blue?", ["no"]))))
    expected, _ = evaluate_chat_export(str(export), read_questions(str(questions), None), "exact_match")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "internvl_train.eval", str(export), f"vqa:{questions}", "--out", str(tmp_path)]
    proc = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "colours accuracy" in proc.stdout and "InternVL-Chat" in proc.stdout
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    flat = record.get("metrics", record)
    assert flat["colours/vqa_accuracy"] == expected["vqa_accuracy"]
    assert flat["colours/n_questions"] == 2
    mixed = subprocess.run([*run[:4], f"csv:{questions}", *run[4:]], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert mixed.returncode == 2 and "run them separately" in mixed.stderr
