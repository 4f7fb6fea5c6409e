"""The package's rooms hold their order (DESIGN.md, "Layout: rooms by layer"): a module imports only rooms below
its own, no module above pipeline/backends/ names a concrete backend kind's package or imports a model library
or an HTTP client (not even inside a function), and nothing above pipeline/backends/ compares a kind's name.

Read from the source with ast, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"
ORDER = ["core", "data", "scoring", "backends", "answering", "tracking", "stages", "run", "cli"]
TOP = len(ORDER)  # pipeline/*.py (the entry point, the Python API) sit above every room
MODEL_LIBRARIES_AND_HTTP = ("torch", "transformers", "vllm", "accelerate", "httpx", "openai", "requests", "urllib3",
                            "aiohttp", "http.client")
KINDS = ("transformers", "openai", "vllm")


def _room(path: Path) -> int:
    parts = path.parts
    return ORDER.index(parts[0]) if len(parts) > 1 and parts[0] in ORDER else TOP


def _imports(text: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _problems(path: Path, text: str) -> list[str]:
    """`path`: the module's place under pipeline/ (stages/plan.py); `text`: its source."""
    room, where, problems = _room(path), Path("pipeline") / path, []
    for line, name in _imports(text):
        parts = name.split(".")
        if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in ORDER and ORDER.index(parts[1]) > room:
            problems.append(f"{where}:{line}: {ORDER[room] if room < TOP else 'top'} imports {name}, a room above it")
        if room > ORDER.index("backends"):
            if parts[:2] == ["pipeline", "backends"] and len(parts) > 2 and parts[2] in KINDS:
                problems.append(f"{where}:{line}: imports {name}, a concrete backend (ask pipeline.backends.registry)")
            if any(name == lib or name.startswith(lib + ".") for lib in MODEL_LIBRARIES_AND_HTTP):
                problems.append(f"{where}:{line}: imports {name} above pipeline/backends/")
        if room < ORDER.index("backends") and any(name == lib or name.startswith(lib + ".")
                                                  for lib in MODEL_LIBRARIES_AND_HTTP):
            problems.append(f"{where}:{line}: imports {name} below pipeline/backends/")
    return _one_per_line(problems)


def _one_per_line(problems: list[str]) -> list[str]:
    """`from a.b import c` is seen as a.b and a.b.c: one problem per line and kind of problem."""
    seen, kept = set(), []
    for problem in problems:
        key = (problem.split(": ")[0], problem.rsplit(",", 1)[-1] if "," in problem else problem.split()[-1])
        if key not in seen:
            seen.add(key)
            kept.append(problem)
    return kept


MODULES = sorted(path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py"))


def test_the_rooms_are_found():
    rooms = {_room(path) for path in MODULES}
    assert rooms == set(range(TOP + 1)), "every room has modules (and the entry point sits above them)"


@pytest.mark.parametrize("path", MODULES, ids=str)
def test_a_module_imports_only_rooms_below_it(path):
    assert _problems(path, (PACKAGE / path).read_text()) == []


NAME_COMPARE = re.compile(r"""\.name\s*[!=]=\s*["'](transformers|openai|vllm|fake)["']|kind\s*[!=]=\s*["']served["']""")


@pytest.mark.parametrize("path", [p for p in MODULES if _room(p) > ORDER.index("backends")],
                         ids=str)
def test_nothing_above_backends_compares_a_kinds_name(path):
    assert NAME_COMPARE.findall((PACKAGE / path).read_text()) == []


def test_the_check_sees_a_lazy_import_and_a_name_compare():
    """The checks themselves: in a stage, a function-level import of a concrete backend and of torch, and a
    compare of the kind's name, are each found once; the same import in a backend is not a problem."""
    text = ('def f(config):\n    from pipeline.backends.openai.plan import plan_served\n    import torch\n'
            '    return config.backend.name == "openai"\n')
    assert len(_problems(Path("stages/planted.py"), text)) == 2
    assert NAME_COMPARE.findall(text) == ["openai"]
    assert _problems(Path("backends/vllm/planted.py"), text) == []
    assert len(_problems(Path("core/planted.py"), "import pipeline.stages.plan\n")) == 1


def test_importing_the_run_path_loads_no_backend_library():
    """What the AST check promises, seen in a fresh interpreter: the runner, the plan stage and the Python API are
    imported without a backend kind's modules, a model library or an HTTP client (a kind loads its own when chosen)."""
    code = ("import sys\nimport pipeline.run.runner, pipeline.stages.plan, pipeline.client\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm', 'httpx', "
            "'openai') or m.startswith(('pipeline.backends.transformers', 'pipeline.backends.openai', "
            "'pipeline.backends.vllm'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
