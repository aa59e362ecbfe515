"""The demo numbers of README.md and docs/stage*.md: `python -m bench.demo_numbers` (see __main__.py) reruns
the demo stages (runs.py), renders their results (tables.py) and rewrites the marked regions (regions.py)."""
from bench.demo_numbers.regions import markers, replace_region, rewrite_docs, rewrite_file
from bench.demo_numbers.runs import (DEFAULT_RUN_ROOT, EVAL_SET, REPO, RUNS, RUNS_BY_NAME, STAGE1, STAGE2, STAGE3,
                                     TIMINGS_FILE, DemoNumbersError, DemoRun, RunData, check_fresh, load_runs,
                                     run_all)
from bench.demo_numbers.tables import REGIONS, render_readme, render_stage1, render_stage2, render_stage3

__all__ = ["DEFAULT_RUN_ROOT", "EVAL_SET", "REGIONS", "REPO", "RUNS", "RUNS_BY_NAME", "STAGE1", "STAGE2", "STAGE3",
           "TIMINGS_FILE", "DemoNumbersError", "DemoRun", "RunData", "check_fresh", "load_runs", "markers",
           "render_readme", "render_stage1", "render_stage2", "render_stage3", "replace_region", "rewrite_docs",
           "rewrite_file", "run_all"]
