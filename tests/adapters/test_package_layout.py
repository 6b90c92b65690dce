"""The adapters package imports one way: formats build on ``weights``, export builds on adapters, no cycles.

Imports are read from the source (in-function ones included: an import hidden in a function
to dodge a cycle is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("hhtune/adapters", "hhtune/export")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, known: set[str]) -> set[str]:
    """The hhtune modules ``path`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    known = {_module(p) for p in (ROOT / "hhtune").rglob("*.py")}
    return {_module(p): _imports(p, known) for p in files}


def test_adapters_never_import_the_export_job():
    graph = _graph()
    bad = {m: sorted(i for i in deps if i.startswith("hhtune.export"))
           for m, deps in graph.items() if m.startswith("hhtune.adapters")}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}
    assert any(d.startswith("hhtune.adapters") for d in graph["hhtune.export"])  # the walk sees real imports


def test_weights_is_the_base_of_the_formats():
    graph = _graph()
    assert not {d for d in graph["hhtune.adapters.formats.weights"] if d.startswith("hhtune.adapters.formats")}
    users = [m for m, deps in graph.items() if "hhtune.adapters.formats.weights" in deps]
    assert "hhtune.adapters.formats.peft" in users and "hhtune.adapters.formats.single" in users


def test_no_import_cycle_in_adapters_or_export():
    graph = _graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles
