"""The chat CLI answers from an exported tiny chat model (subprocess), with the in-process generate()'s answer;
batched generation equals one question at a time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What color is the shape?", "Where is the shape located?"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny chat model exported by the stage-3 exporter (untrained weights, random but fixed)."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "stages"))
    from sft_helpers import tiny_chat_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chat")
    stage, model = tiny_chat_model(root / "run")
    stage.export(model, str(root / "export"))
    return root / "export"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (96, 64), (220, 30, 30)).save(path)
    return path


def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "internvl_train.chat", *args], cwd=REPO_ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def in_process_answers(model_dir: Path, image: Path, batch: bool) -> list[str]:
    from internvl_train.inference.prompt import generate, load_chat_for_inference

    model, prompter = load_chat_for_inference(model_dir)
    with Image.open(image) as im:
        requests = [(q, [im.convert("RGB")]) for q in QUESTIONS]
    if batch:
        return generate(model, prompter, requests, max_new_tokens=6)
    return [generate(model, prompter, [r], max_new_tokens=6)[0] for r in requests]


def test_cli_answers_like_the_in_process_generate(export, image):
    expected = in_process_answers(export, image, batch=False)
    one = chat("--model", str(export), "--image", str(image), "--question", QUESTIONS[0], "--max-new-tokens", "6")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines()[-1:] == [expected[0]] or (expected[0] == "" and one.stdout.strip() == "")
    many = chat("--model", str(export / "official"), "--image", str(image), "--question", "-",
                "--max-new-tokens", "6", stdin="\n".join(QUESTIONS) + "\n")
    assert many.returncode == 0, many.stderr
    assert many.stdout.split("\n")[:2] == expected  # the official-layout export answers identically


def test_batched_generation_equals_one_at_a_time(export, image):
    assert in_process_answers(export, image, batch=True) == in_process_answers(export, image, batch=False)


def test_bad_inputs_fail_with_a_clear_message(export, tmp_path):
    missing = chat("--model", str(export), "--image", str(tmp_path / "nope.png"), "--question", "hi")
    assert missing.returncode != 0 and "nope.png: no such file" in missing.stderr
    no_model = chat("--model", str(tmp_path), "--question", "hi")
    assert no_model.returncode != 0 and "no config.json" in no_model.stderr
    no_tty = chat("--model", str(export), stdin="")
    assert no_tty.returncode != 0 and "--question" in no_tty.stderr


def test_jsonl_vqa_evaluator_scores_the_models_own_answers(export, image, tmp_path):
    import json

    expected = in_process_answers(export, image, batch=False)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "red.png").write_bytes(image.read_bytes())
    rows = [{"question": QUESTIONS[0], "image": "red.png", "answers": [expected[0] or "-", "other"], "kind": "a"},
            {"question": QUESTIONS[1], "image": "red.png", "answers": ["no model says this"], "kind": "b"}]
    questions = bench / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "internvl_train.eval.vqa_jsonl", "--model", str(export),
                          "--questions", str(questions), "--max-new-tokens", "6", "--out", str(tmp_path / "p.jsonl")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout.splitlines()[-1])
    # the first question's accepted alternatives hold the model's own answer (exact match: fully right)
    assert metrics["n_questions"] == 2 and metrics["vqa_accuracy/b"] == 0.0
    assert metrics["vqa_accuracy/a"] == (100.0 if expected[0] else 0.0)
    predictions = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["answer"] for p in predictions] == expected
    bad = subprocess.run([sys.executable, "-m", "internvl_train.eval.vqa_jsonl", "--model", str(export),
                          "--questions", str(questions), "--image-root", str(tmp_path / "nowhere")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "images not found" in bad.stderr and "--image-root" in bad.stderr
