"""Production modules hold no code that only the tests use, and no code nothing uses.

A helper only a test needs (a brute-force oracle, a reference implementation, a driver)
lives under tests/, so that a reader of a production module sees only what runs.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_PACKAGES = {
    "actors",
    "allocator",
    "bench",
    "bus",
    "environments",
    "learner",
    "modelkit",
    "protocol",
    "scripts",
    "tracerl",
    "weightsync",
}
#: Files that may name a function or constant: code, docs, configs and build files.
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".txt", ""}
#: Kept on purpose although only the tests call them, each with its reason.
KEPT = {
    # Hot-reloads a running server's permissions for more runs. The shared test server needs it,
    # and moving it out would reach into the server's private state.
    "authorize_runs",
    # The process of each node of a local cluster, so that a failover test can kill one; only the
    # server holds its child processes.
    "pids",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _repository_text_files() -> tuple[list[Path], list[Path]]:
    """(files outside tests/, files under tests/), without hidden, generated and run directories."""
    production: list[Path] = []
    tests: list[Path] = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in ("runs", "__pycache__")]
        for name in files:
            path = Path(directory, name)
            if path.suffix in TEXT_SUFFIXES:
                (tests if path.relative_to(ROOT).parts[0] == "tests" else production).append(path)
    return production, tests


def _word_counts(paths: list[Path]) -> Counter[str]:
    words: Counter[str] = Counter()
    for path in paths:
        words.update(_WORD.findall(path.read_text(errors="replace")))
    return words


def _registered(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """Under a registering decorator such as ``@app.command("x")``: a framework calls it by that.

    ``@dataclass(frozen=True)`` is a call too, but on a plain name: it transforms, it does not register.
    """
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) for d in node.decorator_list)


def _definitions(tree: ast.Module) -> list[str]:
    """Module-level functions, classes and UPPER_CASE constants, and the methods of module-level classes."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not _registered(node):
            names.append(node.name)
        if isinstance(node, ast.ClassDef):
            names += [
                item.name
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and not item.name.startswith("__")
                and not _registered(item)
            ]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
    return names


def test_every_production_definition_is_used_outside_the_tests():
    production_files, test_files = _repository_text_files()
    used, used_by_tests = _word_counts(production_files), _word_counts(test_files)
    definitions = [
        (path.relative_to(ROOT), name)
        for path in production_files
        if path.suffix == ".py" and path.relative_to(ROOT).parts[0] in PRODUCTION_PACKAGES
        for name in _definitions(ast.parse(path.read_text()))
    ]
    times_defined = Counter(name for _, name in definitions)
    assert {"load_config", "AllocatorCore", "COMPLETE_MARKER"} <= set(times_defined)  # the scan sees the code
    # Every definition names itself once; a use is any other mention outside tests/.
    unused = [
        f"{path}: {name} ({'only the tests use it' if used_by_tests[name] else 'nothing uses it'})"
        for path, name in definitions
        if used[name] <= times_defined[name] and name not in KEPT
    ]
    assert not unused, "move test-only helpers under tests/ and delete unused code:\n" + "\n".join(unused)
