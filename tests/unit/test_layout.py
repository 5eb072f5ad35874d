"""The import graph the README's layout table promises: the program (`gvloop/`) imports the
components, the components import the shared layer (`services/`), never the other way; the
components never import each other; `bench/` imports nothing from `tests/`; no import cycles.

Every import counts, including those inside functions: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gvloop", "agent_a", "agent_b", "trainer", "services")
COMPONENTS = ("agent_a", "agent_b", "trainer")

# What each top-level folder may import from the project, besides itself.
ALLOWED = {
    "gvloop": {"agent_a", "agent_b", "trainer", "services"},
    "agent_a": {"services"},
    "agent_b": {"services"},
    "trainer": {"services"},
    "services": set(),
    "bench": {"gvloop", "agent_a", "agent_b", "trainer", "services"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Project modules `path` imports (absolute imports only: the project uses no relative)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in (*PACKAGES, "tests")}


def source_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for folder in PACKAGES for p in source_files(folder)}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from pkg import name` names a module when one exists, else an attribute of pkg.
        edges[name] = {m if m in modules else m.rpartition(".")[0] for m in imported_modules(path)}
        edges[name] = {m for m in edges[name] if m in modules and m != name}
    return edges


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder: str) -> None:
    wrong = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in source_files(folder)
        for m in sorted(imported_modules(p))
        if (top := m.split(".")[0]) != folder and top not in ALLOWED[folder]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    """The scanner finds imports inside functions, so the tests above can fail."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from agent_a.settings import GeneratorSettings\n")
    assert "agent_a.settings" in imported_modules(module)
