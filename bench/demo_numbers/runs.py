"""The demo runs: what each runs, in a fresh run root, timed; reading back their final results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
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
