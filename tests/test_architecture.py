"""The package's layout holds (docs/architecture.md): imports only flow down.

The imports are read from the source with :mod:`ast` (nothing is imported):

- no circle between the package's parts (its top-level modules and subpackages), counting every
  import, the ones inside functions too, but not those under ``if TYPE_CHECKING:``;
- no circle between modules either, counted the same way;
- no module outside ``affectfpn/recipes`` imports ``affectfpn.recipes``, except the command line,
  which sits above everything;
- no private module or name (``_x``) of a subpackage is imported from another part of the
  package.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "affectfpn"
Import = tuple[str, bool, list[str]]  # (imported module, at module level, names)

# Upward imports kept on purpose, each with its reason: (importing module, imported module).
ALLOWED_UPWARD = {
    # The table functions moved from results to tables (which imports results); results still
    # gives them (on first use, PEP 562 ``__getattr__``), and ``ImagePrediction.to_rows``.
    ("affectfpn.inference.results", "affectfpn.inference.tables"),
}
# Private names used across parts on purpose: none.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[Import]:
    """``(imported module, at module level, names)`` for each affectfpn import in ``tree``."""

    def walk(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    yield from walk(stmt, top)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "affectfpn":
                        yield alias.name, top, []
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] == "affectfpn":
                    yield base, top, [a.name for a in child.names]
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            yield from walk(child, inner)

    yield from walk(tree, True)


def _graph() -> dict[str, list[Import]]:
    graph = {}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = []
        for target, top, names in _imports(tree, module, path.name == "__init__.py"):
            # ``from affectfpn.x import y`` where y is a module imports that module.
            for name in names:
                if f"{target}.{name}" in modules:
                    edges.append((f"{target}.{name}", top, []))
            edges.append((target, top, names))
        graph[module] = edges
    return graph


def _part(module: str) -> str:
    """The top-level module or subpackage that ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _allowed(module: str, target: str) -> bool:
    return any(
        module == a and (target == b or target.startswith(b + ".")) for a, b in ALLOWED_UPWARD
    )


def test_no_circle_between_parts() -> None:
    edges: dict[str, set[str]] = {}
    for module, imports in _graph().items():
        for target, _top, _names in imports:
            if _part(module) != _part(target) and not _allowed(module, target):
                edges.setdefault(_part(module), set()).add(_part(target))
    cycle = _find_cycle(edges)
    assert cycle is None, "import circle between parts: " + " -> ".join(cycle or [])


def test_no_circle_between_modules() -> None:
    edges: dict[str, set[str]] = {}
    for module, imports in _graph().items():
        for target, _top, _names in imports:
            # A package's __init__ importing its own modules is how packages work.
            if target == module or target.startswith(module + ".") or _allowed(module, target):
                continue
            edges.setdefault(module, set()).add(target)
    cycle = _find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_only_recipes_and_the_command_line_import_recipes() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, imports in _graph().items()
        for target, _top, _names in imports
        if _part(target) == "affectfpn.recipes"
        and _part(module) not in ("affectfpn.recipes", "affectfpn.cli")
    )
    assert not wrong, wrong


def test_no_private_names_across_parts() -> None:
    wrong = []
    for module, imports in _graph().items():
        for target, _top, names in imports:
            if _part(module) == _part(target) or (module, target) in ALLOWED_PRIVATE:
                continue
            # Top-level private modules (``affectfpn._version``) are the whole package's helpers.
            private = [p for p in target.split(".")[2:] if p.startswith("_")]
            private += [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                wrong.append(f"{module} imports {private} from {target}")
    assert not wrong, sorted(set(wrong))
