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
from pathlib import Path

from bench.demo_numbers.regions import rewrite_docs
from bench.demo_numbers.runs import DEFAULT_RUN_ROOT, REPO, run_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_numbers", description=__doc__.splitlines()[0])
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
