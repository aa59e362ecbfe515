"""Rewriting the marked regions of the docs: all renders checked before any file is written."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from bench.demo_numbers.runs import REPO, DemoNumbersError, load_runs
from bench.demo_numbers.tables import REGIONS


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
