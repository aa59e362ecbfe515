"""The config modules import no cycle, top-level or function-level imports alike (internvl_train.errors is the
dependency-free bottom): read from the source with ast, nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_MODULES = ("internvl_train/errors.py", "internvl_train/config.py", "internvl_train/config_keys.py",
                  "internvl_train/stages/config.py", "internvl_train/models/config.py",
                  "internvl_train/models/internvit/configuration.py",
                  "internvl_train/models/internvl_c/configuration.py",
                  "internvl_train/models/qllama/configuration.py", "internvl_train/models/chat/configuration.py",
                  "internvl_train/models/tokenizer.py",
                  "data_pipelines/config.py", "data_pipelines/sft/config.py")


def _name(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


def _imports(path: str) -> set[str]:
    """Every module named by an import anywhere in the file (inside functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_errors_imports_only_the_standard_library():
    assert {m.split(".")[0] for m in _imports("internvl_train/errors.py")} <= {"__future__", "contextlib",
                                                                               "pathlib", "typing"}


def test_no_import_cycle_among_the_config_modules():
    names = {_name(p) for p in CONFIG_MODULES}
    graph = {_name(p): _imports(p) & names for p in CONFIG_MODULES}

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import cycle: " + " -> ".join((*trail, module))
        for child in graph[module]:
            visit(child, (*trail, module))

    for module in graph:
        visit(module, ())
