"""Rerun the CPU demo of the three stages and rewrite the demo-number tables in README.md and docs/stage*.md.

    python -m bench.demo_numbers [--run-root DIR] [--skip-run] [--no-variants] [--only RUN,...]

Why: the documented demo numbers used to be typed by hand and drifted from what the deterministic runs give.
Now every demo number in the docs sits between marker comments

    <!-- demo-numbers:<region> begin -->  ...  <!-- demo-numbers:<region> end -->

and this script is the only writer of those regions. It trains, in a fresh run root (default
.cache/demo_numbers, git-ignored; never the user's runs/), stage 1, then stage 2 from that stage-1 export,
then stage 3 from that stage-2 export, then the documented variants (stage 3 with a random ViT and with the
QLLaMA bridge, stage 2 with the paper's frozen QLLaMA and with random ITM negatives), each with the demo's
default command plus explicit run_dir / init_from overrides pointing inside the run root. It times each run
(wall clock, written to <run root>/timings.json with the date, the commit of the code and the load average
at start and end, since the machine may be shared; a failing run stops the script), reads each
<run_dir>/results.jsonl (final evaluation) and metrics.jsonl (final logged losses) and replaces the marked
regions. Text outside the markers is never touched; a missing marker
is an error naming the file and region.

--skip-run rewrites the regions from an existing run root (after a manual run, or in tests).
--no-variants runs the three default stages only; variant rows whose results are absent are left out.
--only RUN,... runs just those (names: RUNS below) into an existing run root, e.g. a variant added later.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN_ROOT = REPO / ".cache" / "demo_numbers"
TIMINGS_FILE = "timings.json"
EVAL_SET = "demo_heldout"  # the demo data's held-out pair split (data_pipelines/pairs.py)


class DemoNumbersError(RuntimeError):
    """A missing/duplicated marker, or a run whose results are missing."""


@dataclass(frozen=True)
class DemoRun:
    """One training command. `doc_args` is what the docs show (the demo's own command); `root_args` are the
    overrides that keep it inside the run root ({root} is replaced by it)."""

    name: str  # sub-directory of the run root and key of timings.json
    doc_args: tuple[str, ...]
    root_args: tuple[str, ...]
    variant: bool = False

    def doc_command(self) -> str:
        return " ".join(("python -m internvl_train", *self.doc_args))

    def argv(self, root: Path) -> list[str]:
        extra = [a.replace("{root}", str(root)) for a in self.root_args]
        return [sys.executable, "-m", "internvl_train", *self.doc_args, f"run_dir={root / self.name}", *extra]


STAGE1 = "contrastive"
STAGE2 = "generative"
STAGE3 = "sft"
# In run order: each stage starts from the previous stage's export, as docs/stage2.md and stage3.md describe.
RUNS = (
    DemoRun(STAGE1, ("stage=contrastive",), ()),
    DemoRun(STAGE2, ("stage=generative",), ("init_from={root}/contrastive/export",)),
    DemoRun(STAGE3, ("stage=sft",), ("init_from={root}/generative/export",)),
    # The variants, in order of how much the docs' conclusions lean on them.
    # A scratch ViT forbids init_from; the LLM still comes from the stage-2 export's text tower.
    DemoRun("sft_scratch", ("stage=sft", "stage.vision_init=scratch"),
            ("stage.previous_exports=[{root}/generative/export]",), variant=True),
    DemoRun("generative_frozen_qllama", ("stage=generative", "stage.train_qllama=false"),
            ("init_from={root}/contrastive/export",), variant=True),
    DemoRun("sft_qllama", ("stage=sft", "model.chat.bridge=mlp+qllama"),
            ("init_from={root}/generative/export",), variant=True),
    DemoRun("generative_itm_random", ("stage=generative", "stage.itm_negatives=random"),
            ("init_from={root}/contrastive/export",), variant=True),
)
RUNS_BY_NAME = {r.name: r for r in RUNS}


# ---------------------------------------------------------------- running

def check_fresh(root: Path) -> None:
    """A run dir that already holds checkpoints would resume (resume=auto): numbers and wall times would not
    be those of a fresh run."""
    if root.exists() and any(root.iterdir()):
        raise DemoNumbersError(f"run root {root} is not empty: remove it for a fresh run, or pass --skip-run "
                               "to rewrite the docs from its results")


def code_version() -> str:
    """The commit the runs use, '+dirty' when the working tree differs from it (numbers from uncommitted code
    must be regenerated once it is committed); 'unknown' outside a git checkout."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD")
    if not sha:
        return "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_one(run: DemoRun, root: Path) -> dict[str, Any]:
    """Train one run, its console output to <root>/<name>.log; returns its timing record."""
    root.mkdir(parents=True, exist_ok=True)
    record = {"command": run.doc_command(), "argv": run.argv(root)[1:], "date": time.strftime("%Y-%m-%d"),
              "code": code_version(), "load_average_at_start": round(os.getloadavg()[0], 1)}
    print(f"[demo_numbers] {run.name}: {' '.join(record['argv'])}", flush=True)
    start = time.monotonic()
    with open(root / f"{run.name}.log", "w") as log:
        proc = subprocess.run(run.argv(root), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    record["wall_s"] = round(time.monotonic() - start, 1)
    record["load_average_at_end"] = round(os.getloadavg()[0], 1)
    if proc.returncode != 0:
        raise DemoNumbersError(f"{run.name} exited {proc.returncode}; see {root / (run.name + '.log')}")
    print(f"[demo_numbers] {run.name}: done in {record['wall_s']} s", flush=True)
    return record


def run_all(root: Path, variants: bool, only: list[str] | None = None) -> None:
    """Run the stages in order (or just `only`, in that order, into an existing root whose earlier stages
    are done), saving timings.json after each so a later --skip-run has them."""
    if only is None:
        check_fresh(root)
        todo = [r for r in RUNS if variants or not r.variant]
    else:
        unknown = [n for n in only if n not in RUNS_BY_NAME]
        if unknown:
            raise DemoNumbersError(f"--only: unknown run(s) {unknown}; known: {list(RUNS_BY_NAME)}")
        todo = [RUNS_BY_NAME[n] for n in only]
        for run in todo:
            check_fresh(root / run.name)
    path = root / TIMINGS_FILE
    if only is None:
        path.unlink(missing_ok=True)
    for run in todo:
        record = run_one(run, root)
        # re-read: another --only process may have recorded its runs meanwhile
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[run.name] = record
        path.write_text(json.dumps(timings, indent=1) + "\n")


# ---------------------------------------------------------------- reading results

def final_results(run_dir: Path) -> dict[str, float]:
    """The metrics of the last record of <run_dir>/results.jsonl (the end-of-training evaluation). Accepts
    both the trainer's flat records ({'step', **metrics}) and eval.results' ({'metrics': {...}})."""
    path = run_dir / "results.jsonl"
    if not path.exists():
        raise DemoNumbersError(f"{path} does not exist: run the stage first (or drop --skip-run)")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise DemoNumbersError(f"{path} is empty")
    last = lines[-1]
    if isinstance(last.get("metrics"), dict):
        return dict(last["metrics"])
    return {k: v for k, v in last.items() if k not in ("step", "time", "stage")}


def final_logged(run_dir: Path, key: str) -> float | None:
    """The last value of `key` in <run_dir>/metrics.jsonl (training losses), None when never logged."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text().splitlines():
        if line.strip():
            value = json.loads(line).get(key, value)
    return value


@dataclass
class RunData:
    name: str
    metrics: dict[str, float]
    timing: dict[str, Any]
    run_dir: Path

    def m(self, key: str) -> float:
        if key not in self.metrics:
            raise DemoNumbersError(f"{self.run_dir}/results.jsonl has no {key!r} (has {sorted(self.metrics)[:8]}...)")
        return self.metrics[key]

    def logged(self, key: str) -> float:
        value = final_logged(self.run_dir, key)
        if value is None:
            raise DemoNumbersError(f"{self.run_dir}/metrics.jsonl never logged {key!r}")
        return value


def load_runs(root: Path) -> dict[str, RunData]:
    """Every run of RUNS with results under root; the three default stages must be there."""
    timings = json.loads((root / TIMINGS_FILE).read_text()) if (root / TIMINGS_FILE).exists() else {}
    data = {}
    for run in RUNS:
        run_dir = root / run.name
        if not (run_dir / "results.jsonl").exists() and run.variant:
            continue
        timing = timings.get(run.name, {"command": run.doc_command()})
        data[run.name] = RunData(run.name, final_results(run_dir), timing, run_dir)
    return data


# ---------------------------------------------------------------- formatting

def pct(v: float) -> str:
    return f"{v:.1f}"


def fixed(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}f}"


def wall(run: RunData) -> str:
    w = run.timing.get("wall_s")
    return f"{w:.0f} s" if w is not None else "n/a"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def provenance(runs: Mapping[str, RunData], names: list[str]) -> str:
    """One line: when, by which script, on how loaded a machine."""
    present = [runs[n] for n in names if n in runs]
    dates = sorted({r.timing.get("date", "unknown date") for r in present})
    loads = [r.timing[k] for r in present for k in ("load_average_at_start", "load_average_at_end")
             if k in r.timing]
    spread = f"{min(loads)}" if loads and min(loads) == max(loads) else f"{min(loads)}-{max(loads)}" if loads else ""
    load = f", 1-min load average {spread} at the starts/ends of the runs" if loads else ""
    codes = sorted({r.timing["code"] for r in present if r.timing.get("code", "unknown") != "unknown"})
    code = f", code {' / '.join(codes)}" if codes else ""
    text = (f"Generated by `python -m bench.demo_numbers` from runs of {' / '.join(dates)}{code} on "
            f"{os.cpu_count()} CPU cores{load} (wall times depend on that load; the metrics do not). Each command "
            "ran in a fresh run root with `run_dir` / `init_from` pointing inside it.")
    return textwrap.fill(text, width=110, break_on_hyphens=False, break_long_words=False)


def zs(run: RunData, enc: str) -> str:
    return pct(run.m(f"{EVAL_SET}/{enc}/zeroshot_top1"))


def recalls(run: RunData, enc: str, direction: str) -> str:
    return " / ".join(pct(run.m(f"{EVAL_SET}/{enc}/{direction}_R@{k}")) for k in (1, 5, 10))


def caption(run: RunData, key: str) -> float:
    return run.m(f"{EVAL_SET}/caption/{key}")


# ---------------------------------------------------------------- regions

def render_stage1(runs: Mapping[str, RunData]) -> str:
    s1 = runs[STAGE1]
    chance1, chance5 = (s1.m(f"{EVAL_SET}/c/zeroshot_top{k}_chance") for k in (1, 5))
    header = ["command", "wall", f"zero-shot top-1 / top-5 (chance {chance1:.0f} / {chance5:.0f})",
              "i2t R@1 / R@5 / R@10", "t2i R@1 / R@5 / R@10", "mean recall", "final `loss/text_lm`"]
    row = [f"`{s1.timing['command']}`", wall(s1),
           f"{zs(s1, 'c')} / {pct(s1.m(f'{EVAL_SET}/c/zeroshot_top5'))}", recalls(s1, "c", "i2t"),
           recalls(s1, "c", "t2i"), pct(s1.m(f"{EVAL_SET}/c/mean_recall")), fixed(2)(s1.logged("loss/text_lm"))]
    return provenance(runs, [STAGE1]) + "\n\n" + table(header, [row])


def stage2_retrieval_rows(s1: RunData, s2: RunData) -> list[list[str]]:
    def row(label: str, run: RunData, enc: str) -> list[str]:
        return [label, zs(run, enc), recalls(run, enc, "i2t"), recalls(run, enc, "t2i"),
                pct(run.m(f"{EVAL_SET}/{enc}/mean_recall"))]

    return [row("InternVL-C, end of stage 1", s1, "c"),
            row("G (`clip_projector2` over the query outputs), end of stage 2", s2, "g"),
            row("C+G (official InternVL-G ensemble), end of stage 2", s2, "cg"),
            row("C's image side with the stage-2 text tower (`c`), end of stage 2", s2, "c")]


def stage2_variant_rows(runs: Mapping[str, RunData]) -> list[list[str]]:
    """Per stage-2 run: G retrieval, captions against the baseline, ITG loss with own / other image, ITM."""
    rows = []
    for name in (STAGE2, "generative_itm_random", "generative_frozen_qllama"):
        if name not in runs:
            continue
        r = runs[name]
        rows.append([f"`{r.timing['command']}`", wall(r), zs(r, "g"),
                     f"{pct(r.m(f'{EVAL_SET}/g/i2t_R@1'))} / {pct(r.m(f'{EVAL_SET}/g/t2i_R@1'))}",
                     pct(r.m(f"{EVAL_SET}/g/mean_recall")),
                     f"{caption(r, 'bleu4'):.3f} / {caption(r, 'cider'):.2f}",
                     f"{caption(r, 'itg_loss'):.3f} / {caption(r, 'itg_loss_other_image'):.3f}",
                     f"{r.logged('loss/itm'):.3f} / {r.logged('loss/itm_accuracy'):.3f}"])
    return rows


def render_stage2(runs: Mapping[str, RunData]) -> str:
    s1, s2 = runs[STAGE1], runs[STAGE2]
    n_images = caption(s2, "n_images")
    retrieval = table(["image embedding", "zero-shot top-1", "i2t R@1 / R@5 / R@10", "t2i R@1 / R@5 / R@10",
                       "mean recall"], stage2_retrieval_rows(s1, s2))
    variants = table(["command", "wall", "G zero-shot top-1", "G R@1 i2t / t2i", "G mean recall",
                      "captions BLEU-4 / CIDEr", "`caption/itg_loss` own / other image",
                      "final `loss/itm` / `loss/itm_accuracy`"], stage2_variant_rows(runs))
    baseline = (f"Constant-caption baseline (the set's most frequent caption for every image): BLEU-4 "
                f"{caption(s2, 'baseline_bleu4'):.3f} / CIDEr {caption(s2, 'baseline_cider'):.2f}; captions are "
                f"greedy, on {n_images:.0f} held-out images; ITG loss in nats per reference token.")
    return "\n\n".join([provenance(runs, [n for n in runs if n.startswith(("contrastive", "generative"))]),
                        f"Stage 1 (`{s1.timing['command']}`, {wall(s1)}) then stage 2 "
                        f"(`{s2.timing['command']}`, {wall(s2)}); held-out demo split, recall in %:",
                        retrieval, "Stage-2 runs, each from the same stage-1 export:", variants, baseline])


def render_stage3(runs: Mapping[str, RunData]) -> str:
    kinds = ("color", "shape", "size", "position", "background", "yes/no")
    vits = {STAGE3: "stage-2 export, frozen", "sft_scratch": "random, frozen",
            "sft_qllama": "stage-2 export + its QLLaMA queries, frozen"}
    rows = []
    for name, vit in vits.items():
        if name not in runs:
            continue
        r = runs[name]
        rows.append([f"`{r.timing['command']}`", wall(r), vit, pct(r.m("vqa/vqa_accuracy")),
                     *(pct(r.m(f"vqa/vqa_accuracy/{k}")) for k in kinds)])
    s3 = runs[STAGE3]
    header = ["command", "wall", "ViT", "VQA acc.", *kinds]
    note = (f"{s3.m('vqa/n_questions'):.0f} held-out questions, exact match against the accepted answers; "
            f"majority-answer baseline {pct(s3.m('vqa/majority_baseline'))} %. Every row starts from the same "
            "stage-1 and stage-2 runs and takes its LLM from the stage-2 export's text tower.")
    return "\n\n".join([provenance(runs, [n for n in runs]), note, table(header, rows)])


def render_readme(runs: Mapping[str, RunData]) -> str:
    s1, s2, s3 = runs[STAGE1], runs[STAGE2], runs[STAGE3]
    rows = [
        [f"`{s1.timing['command']}`", wall(s1), "zero-shot top-1 / top-5 over 20 classes (chance "
         f"{s1.m(f'{EVAL_SET}/c/zeroshot_top1_chance'):.0f} / {s1.m(f'{EVAL_SET}/c/zeroshot_top5_chance'):.0f})",
         f"{zs(s1, 'c')} / {pct(s1.m(f'{EVAL_SET}/c/zeroshot_top5'))} %"],
        [f"`{s2.timing['command']}`", wall(s2), "retrieval mean recall, G (C at the end of stage 1)",
         f"{pct(s2.m(f'{EVAL_SET}/g/mean_recall'))} ({pct(s1.m(f'{EVAL_SET}/c/mean_recall'))}) %"],
        ["", "", "captions BLEU-4 / CIDEr (constant-caption baseline)",
         f"{caption(s2, 'bleu4'):.3f} / {caption(s2, 'cider'):.2f} "
         f"({caption(s2, 'baseline_bleu4'):.3f} / {caption(s2, 'baseline_cider'):.2f})"],
        [f"`{s3.timing['command']}`", wall(s3), "held-out VQA accuracy (majority-answer baseline)",
         f"{pct(s3.m('vqa/vqa_accuracy'))} ({pct(s3.m('vqa/majority_baseline'))}) %"],
    ]
    return provenance(runs, [STAGE1, STAGE2, STAGE3]) + "\n\n" + table(["command", "wall", "metric", "value"], rows)


# file (relative to the repo) -> region name -> renderer
REGIONS: dict[str, dict[str, Callable[[Mapping[str, RunData]], str]]] = {
    "README.md": {"readme": render_readme},
    "docs/stage1.md": {"stage1": render_stage1},
    "docs/stage2.md": {"stage2": render_stage2},
    "docs/stage3.md": {"stage3": render_stage3},
}


# ---------------------------------------------------------------- rewriting

def markers(region: str) -> tuple[str, str]:
    return f"<!-- demo-numbers:{region} begin -->", f"<!-- demo-numbers:{region} end -->"


def replace_region(text: str, region: str, body: str, where: str = "<text>") -> str:
    """`text` with what lies between the region's markers replaced by `body`; everything else unchanged."""
    begin, end = markers(region)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise DemoNumbersError(f"{where}: expected exactly one {begin!r} and one {end!r} "
                               f"(found {text.count(begin)} and {text.count(end)})")
    head, rest = text.split(begin)
    middle, tail = rest.split(end)
    if end in head:
        raise DemoNumbersError(f"{where}: {end!r} comes before {begin!r}")
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def rewrite_file(path: Path, bodies: Mapping[str, str]) -> bool:
    """Replace every region of `bodies` in the file; True when the file changed."""
    old = path.read_text(encoding="utf-8")
    new = old
    for region, body in bodies.items():
        new = replace_region(new, region, body, where=str(path))
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old


def rewrite_docs(root: Path, repo: Path = REPO,
                 regions: Mapping[str, Mapping[str, Callable]] = REGIONS) -> list[Path]:
    """Render every region from the runs under root (all before writing, so a missing metric leaves every
    file as it was) and write them; returns the files that changed."""
    runs = load_runs(root)
    bodies = {rel: {name: render(runs) for name, render in regs.items()} for rel, regs in regions.items()}
    for rel, regs in bodies.items():  # check every marker first: no half-rewritten doc set
        text = (repo / rel).read_text(encoding="utf-8")
        for name in regs:
            replace_region(text, name, "", where=str(repo / rel))
    return [repo / rel for rel, regs in bodies.items() if rewrite_file(repo / rel, regs)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-root", type=Path, default=DEFAULT_RUN_ROOT,
                        help=f"where the runs go (default {DEFAULT_RUN_ROOT.relative_to(REPO)}; must be empty "
                             "unless --skip-run)")
    parser.add_argument("--skip-run", action="store_true", help="rewrite the docs from existing results only")
    parser.add_argument("--no-variants", action="store_true", help="run the three default stages only")
    parser.add_argument("--only", help="comma-separated runs to (re)do in an existing run root, e.g. "
                                       "sft_scratch after a --no-variants run; their run dirs must not exist")
    args = parser.parse_args(argv)
    root = args.run_root.resolve()
    if not args.skip_run:
        run_all(root, variants=not args.no_variants, only=args.only.split(",") if args.only else None)
    changed = rewrite_docs(root)
    print("[demo_numbers] rewrote: " + (", ".join(str(p.relative_to(REPO)) for p in changed) or "nothing changed"))


if __name__ == "__main__":
    main()
