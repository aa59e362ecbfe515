"""bench/demo_numbers rewrites the marked demo-number regions of the docs from results.jsonl files: values
appear rounded, text outside the markers is untouched, a missing marker is an error that names it. Fast: no
training, a generated run root."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package: import it from the checkout

from bench import demo_numbers as dn  # noqa: E402

SET = dn.EVAL_SET
KINDS = ("color", "shape", "size", "position", "background", "yes/no")


def image_text(encoder: str, base: float) -> dict[str, float]:
    """Every zero-shot / retrieval key of one encoder, values with more digits than the docs show."""
    out = {f"{SET}/{encoder}/zeroshot_top1": base + 0.0123, f"{SET}/{encoder}/zeroshot_top5": 99.96,
           f"{SET}/{encoder}/zeroshot_top1_chance": 5.0, f"{SET}/{encoder}/zeroshot_top5_chance": 25.0,
           f"{SET}/{encoder}/mean_recall": base + 1.04}
    for direction in ("i2t", "t2i"):
        out.update({f"{SET}/{encoder}/{direction}_R@{k}": base + k for k in (1, 5, 10)})
    return out


def write_run(root: Path, name: str, results: list[dict], logged: dict[str, float] | None = None) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    if logged:
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 300, **logged}) + "\n")


@pytest.fixture()
def run_root(tmp_path: Path) -> Path:
    """The three default stages as the trainer writes them ({'step', **metrics} per line); stage 1 has a
    stale earlier evaluation first, which must not be used."""
    root = tmp_path / "runs"
    write_run(root, dn.STAGE1, [{"step": 100, **image_text("c", 11.0)}, {"step": 300, **image_text("c", 27.6123)}],
              {"loss/text_lm": 0.61789})
    caption = {f"{SET}/caption/{k}": v for k, v in {"bleu4": 0.18749, "cider": 2.1449, "baseline_bleu4": 0.1361,
                                                   "baseline_cider": 1.0123, "n_images": 200.0, "itg_loss": 0.38234,
                                                   "itg_loss_other_image": 0.77561}.items()}
    write_run(root, dn.STAGE2, [{"step": 300, **image_text("c", 25.4), **image_text("g", 29.0),
                                 **image_text("cg", 33.4), **caption}],
              {"loss/itm": 0.6321, "loss/itm_accuracy": 0.66667})
    vqa = {"vqa/vqa_accuracy": 56.84, "vqa/n_questions": 500.0, "vqa/majority_baseline": 10.0,
           **{f"vqa/vqa_accuracy/{k}": 50.04 + i for i, k in enumerate(KINDS)}}
    write_run(root, dn.STAGE3, [{"step": 300, **vqa}])
    timings = {run: {"command": dn.RUNS_BY_NAME[run].doc_command(), "date": "2026-12-02", "wall_s": 68.4,
                     "load_average_at_start": 3.2} for run in (dn.STAGE1, dn.STAGE2, dn.STAGE3)}
    (root / dn.TIMINGS_FILE).write_text(json.dumps(timings))
    return root


HEAD = "# Title\n\nProse before, 12.345 stays as typed.\n\n"
TAIL = "\n\nProse after | with a | pipe.\n"


def doc_with_region(region: str, inside: str = "old table 27.0\n") -> str:
    begin, end = dn.markers(region)
    return f"{HEAD}{begin}\n{inside}{end}{TAIL}"


def test_stage1_region_is_rewritten_rounded_and_nothing_else_changes(run_root: Path, tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(doc_with_region("stage1"))
    changed = dn.rewrite_docs(run_root, repo=tmp_path, regions={"doc.md": {"stage1": dn.render_stage1}})
    text = doc.read_text()
    assert changed == [doc]
    assert text.startswith(HEAD) and text.endswith(TAIL)
    region = text[len(HEAD):-len(TAIL)]
    assert "old table" not in region
    assert "| 27.6 / 100.0 |" in region  # the final evaluation, rounded; not the stale step-100 one
    assert "27.6123" not in region and "11.0" not in region
    assert "| 28.6 / 32.6 / 37.6 |" in region  # R@1/5/10
    assert "| 0.62 |" in region and "| 68 s |" in region
    assert "`python -m internvl_train stage=contrastive`" in region
    assert "2026-12-02" in region


def test_rewrite_is_idempotent(run_root: Path, tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(doc_with_region("stage1"))
    regions = {"doc.md": {"stage1": dn.render_stage1}}
    dn.rewrite_docs(run_root, repo=tmp_path, regions=regions)
    once = doc.read_text()
    assert dn.rewrite_docs(run_root, repo=tmp_path, regions=regions) == []
    assert doc.read_text() == once


@pytest.mark.parametrize("broken", ["no begin", "no end", "twice"])
def test_missing_or_duplicated_marker_is_an_error_and_writes_nothing(run_root: Path, tmp_path: Path, broken: str):
    begin, end = dn.markers("stage1")
    text = {"no begin": doc_with_region("stage1").replace(begin, ""),
            "no end": doc_with_region("stage1").replace(end, ""),
            "twice": doc_with_region("stage1") + doc_with_region("stage1")}[broken]
    good = tmp_path / "a.md"
    good.write_text(doc_with_region("readme"))
    bad = tmp_path / "b.md"
    bad.write_text(text)
    regions = {"a.md": {"readme": dn.render_readme}, "b.md": {"stage1": dn.render_stage1}}
    with pytest.raises(dn.DemoNumbersError, match=r"b\.md.*demo-numbers:stage1"):
        dn.rewrite_docs(run_root, repo=tmp_path, regions=regions)
    assert good.read_text() == doc_with_region("readme")  # checked before anything is written
    assert bad.read_text() == text


def test_all_regions_render_and_absent_variants_are_left_out(run_root: Path):
    runs = dn.load_runs(run_root)
    assert set(runs) == {dn.STAGE1, dn.STAGE2, dn.STAGE3}
    stage2 = dn.render_stage2(runs)
    assert "| 0.187 / 2.14 |" in stage2 and "| 0.382 / 0.776 |" in stage2 and "| 0.632 / 0.667 |" in stage2
    assert "itm_negatives=random" not in stage2
    stage3 = dn.render_stage3(runs)
    assert "| 56.8 | 50.0 | 51.0 |" in stage3 and "baseline 10.0 %" in stage3 and "scratch" not in stage3
    readme = dn.render_readme(runs)
    assert "27.6 / 100.0 %" in readme and "56.8 (10.0) %" in readme


def test_missing_metric_names_the_file(run_root: Path):
    lines = (run_root / dn.STAGE3 / "results.jsonl").read_text()
    (run_root / dn.STAGE3 / "results.jsonl").write_text(lines.replace('"vqa/vqa_accuracy"', '"renamed"'))
    with pytest.raises(dn.DemoNumbersError, match=r"sft/results\.jsonl has no 'vqa/vqa_accuracy'"):
        dn.render_stage3(dn.load_runs(run_root))


def test_a_used_run_root_is_refused(tmp_path: Path):
    (tmp_path / "contrastive").mkdir()
    with pytest.raises(dn.DemoNumbersError, match="not empty"):
        dn.check_fresh(tmp_path)


def test_the_repository_docs_have_every_region_marker():
    for rel, regions in dn.REGIONS.items():
        text = (REPO / rel).read_text(encoding="utf-8")
        for region in regions:
            dn.replace_region(text, region, "", where=rel)  # raises when a marker is missing


def test_only_names_known_runs_and_refuses_a_used_run_dir(tmp_path: Path):
    with pytest.raises(dn.DemoNumbersError, match="unknown run"):
        dn.run_all(tmp_path, variants=True, only=["sft_scrach"])
    (tmp_path / "sft_scratch").mkdir()
    (tmp_path / "sft_scratch" / "results.jsonl").write_text("{}\n")
    with pytest.raises(dn.DemoNumbersError, match="not empty"):
        dn.run_all(tmp_path, variants=True, only=["sft_scratch"])


def test_a_variant_with_results_gets_its_row(run_root: Path):
    vqa = {"vqa/vqa_accuracy": 47.16, "vqa/n_questions": 500.0, "vqa/majority_baseline": 10.0,
           **{f"vqa/vqa_accuracy/{k}": 20.04 for k in KINDS}}
    write_run(run_root, "sft_scratch", [{"step": 300, **vqa}])
    stage3 = dn.render_stage3(dn.load_runs(run_root))
    assert "`python -m internvl_train stage=sft stage.vision_init=scratch` | n/a | random, frozen | 47.2 | 20.0 |" \
        in stage3
