"""The shape docs/architecture.md describes: no import cycles in app/, and the results layer free of the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def module_name(path: Path) -> str:
    """app/openai_api/chat.py -> app.openai_api.chat; a package's __init__.py is the package."""
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Each app module -> the app modules it imports at module level (imports inside functions are lazy)."""
    modules = {module_name(path): path for path in APP.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # from app.protocol import native: the submodule, when there is one of that name.
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            found |= {target for target in targets if target in modules and target != name}
        graph[name] = found
    return graph


def test_there_are_no_import_cycles() -> None:
    """A depth-first search over the module-level imports finds no module that imports itself again."""
    graph = module_imports()
    assert len(graph) > 20, "the app's modules were not found"
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [name, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    "module",
    ["app.transcript", "app.text", "app.words", "app.formats", "app.subtitles", "app.outputs", "app.protocol.native"],
)
def test_results_never_import_the_engine(module: str) -> None:
    """Rendering and describing a transcript needs neither the pipeline nor the engine, directly or not."""
    graph = module_imports()
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(graph[name])
    assert not seen & {"app.pipeline", "app.engine", "app.jobs"}, sorted(seen)
