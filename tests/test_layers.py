"""The package's import graph points one way: no cycles, and no module imports a layer above its own.

Every ``import``/``from ... import`` of an ``agentrl`` module counts, also those inside functions
(a lazy import is still a dependency); only ``if TYPE_CHECKING:`` blocks are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agentrl

ROOT = Path(agentrl.__file__).parent

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("types", "registry", "seeding", "stats", "serving"),
    ("envs", "agents"),
    ("policies",),
    ("rollout",),
    ("credit",),
    ("distributed",),
    ("evaluation",),  # the one evaluator: training's before/after evaluation and agentrl eval
    ("trainers", "config"),  # the training config names losses, estimators, envs and formats
    ("eval",),
    ("cli", "__main__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph() -> dict[str, set[str]]:
    """module -> the agentrl modules it imports (a name imported from a package counts as the
    submodule when it is one, else as the package)."""
    modules = _modules()

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        skip = _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps.update(known(a.name) for a in node.names if a.name.split(".")[0] == "agentrl")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] == "agentrl":
                    deps.update(
                        known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base)
                        for a in node.names
                    )
        deps.discard(mod)
        graph[mod] = deps
    return graph


def layer_of(module: str) -> int | None:
    """The layer index of ``agentrl.<top>...``; None for the package itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for k, names in enumerate(LAYERS):
        if parts[1] in names:
            return k
    raise AssertionError(f"{module} is in no layer; add agentrl.{parts[1]} to LAYERS in {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for mod, deps in sorted(import_graph().items()):
        here = layer_of(mod)
        for dep in sorted(deps):
            there = layer_of(dep)
            if here is not None and there is not None and there > here:
                upward.append(f"{mod} (layer {here}) imports {dep} (layer {there})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    graph = import_graph()
    assert (
        "agentrl.serving" in graph["agentrl.envs.remote"]
        and "agentrl.distributed" in graph["agentrl.trainers.learner"]
    )
    assert (
        layer_of("agentrl.eval.learning")
        > layer_of("agentrl.trainers.loop")
        > layer_of("agentrl.credit.base")
    )
