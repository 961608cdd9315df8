"""The shape of the tree that issue 16 asks for, checked on the source (ast, no imports of it
in this process) or in a fresh interpreter:

- train/spec/ imports with torch made unimportable, and the driver's entry modules import
  without torch;
- no import cycle among train/ and launch/ modules, counting imports inside functions too;
- no function in train/ or launch/ longer than 80 lines;
- no module name twice across train/ and launch/ (`__init__`/`__main__` aside);
- layout names compared (==, !=, in, case) or used as dict keys only in train/spec/catalog.py;
- imports inside functions: never of a project module (they hide cycles), and of others only
  to defer a heavy optional dependency (the list below).

Each assertion lists every offender, so one run shows all that is left.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO, run_command

PACKAGES = ("train", "launch")
MAX_FUNCTION_LINES = 80
CATALOG = Path("train/spec/catalog.py")
LAYOUT_NAMES = {
    *("ddp", "fsdp", "hsdp", "zero1", "zero2", "zero3", "tp", "tp_fsdp", "pp", "pp_fsdp"),
    *("ep", "ep_fsdp"),
}
# Mesh dimensions (train/spec/degrees.py MESH_DIMS): "tp", "pp" and "ep" spell a layout and a
# dim.
MESH_DIMS = {"pp", "dp_replicate", "dp_shard", "ep", "tp"}
MESH_ONLY_DIMS = MESH_DIMS - LAYOUT_NAMES
# What a function may import, by top-level package: heavy optional dependencies whose import
# is deferred to the code that needs them.
DEFERRED_ANYWHERE = {
    "deepspeed",
    "torchao",
    "transformer_engine",
    "hta",
    "matplotlib",
    "wandb",
    "submitit",
}
# Hydra's internals: only the CLI entry reaches into them, and only when a command runs.
DEFERRED_IN = {"hydra": {Path("launch/app.py")}}
# Modules of torch that cost more than torch itself, each needed by one optional path.
DEFERRED_SUBMODULES = {
    "torch._inductor": {Path("train/parallel/build.py")},  # 1.7 s; async TP under compile only
}
# The driver imports torch only where it measures or detects devices.
TORCH_IN_LAUNCH = {
    Path("launch/resolve.py"),  # gpu=auto: which device, how many
    Path("launch/cluster/link_match.py"),  # measures the link
    Path("launch/bench"),  # the matmul ceiling and host kernels: measurements
}
# Entry points of the driver that must not pull torch in (they run before any rank).
DRIVER_ENTRIES = ["launch.app", "launch.validate", "launch.plan", "launch.perfmodel.projection"]


# --- the source, parsed once --------------------------------------------------------------


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> path (relative to the repo) of every module of train/ and launch/."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = rel
    return found


@cache
def tree(rel: Path) -> ast.Module:
    return ast.parse((REPO / rel).read_text(), filename=str(rel))


def function_scoped(module: ast.Module):
    """(node, enclosing function or None) for every node of a module."""
    stack = [(child, None) for child in ast.iter_child_nodes(module)]
    while stack:
        node, function = stack.pop()
        yield node, function
        inner = node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def imported_names(node: ast.Import | ast.ImportFrom, module_name: str, rel: Path) -> list[str]:
    """The absolute dotted names an import statement loads (for `from X import y`: X.y when
    that is a module of the tree, else X)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the module's package upwards
        package = module_name.split(".")
        if rel.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, node.module] if node.module else package)
    else:
        base = node.module or ""
    known = modules()
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
    ]


def project_module(name: str) -> str | None:
    """The module of the tree an import name lands in (the longest known prefix), if any."""
    known = modules()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


@cache
def imports() -> list[tuple[str, Path, int, str, bool]]:
    """(importing module, its path, line, imported absolute name, inside a function?)."""
    found = []
    for name, rel in modules().items():
        for node, function in function_scoped(tree(rel)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_names(node, name, rel):
                    found.append((name, rel, node.lineno, target, function is not None))
    return found


def is_in(rel: Path, places: set[Path]) -> bool:
    return any(rel == place or place in rel.parents for place in places)


# --- torch stays out of the spec and the driver --------------------------------------------

BLOCK_TORCH = """
import sys, traceback

class BlockTorch:
    # torch made unimportable: any import of it raises, as on a machine without torch.
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here ({name})")
        return None

sys.meta_path.insert(0, BlockTorch())
"""

WATCH_TORCH = f"""
import sys, traceback

class WatchTorch:
    # torch importable; the first import of it records which project lines asked for it.
    first = None
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and WatchTorch.first is None:
            WatchTorch.first = [
                f"{{f.filename[len({str(REPO) + "/"!r}):]}}:{{f.lineno}}"
                for f in traceback.extract_stack()
                if f.filename.startswith({str(REPO) + "/"!r})
            ]
        return None

sys.meta_path.insert(0, WatchTorch())
"""


def run_python(code: str):
    return run_command([sys.executable, "-c", code], REPO, timeout=120)


def test_the_spec_imports_with_torch_unimportable():
    spec = sorted(n for n in modules() if n == "train.spec" or n.startswith("train.spec."))
    assert len(spec) > 1, spec
    code = BLOCK_TORCH + textwrap.dedent(
        f"""
        import importlib
        failed = []
        for name in {spec!r}:
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
        print("\\n".join(failed))
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        """
    )
    result = run_python(code)
    assert result.returncode == 0 and not result.stdout.strip(), (
        result.stdout + result.stderr[-2000:]
    )


@pytest.mark.parametrize("entry", DRIVER_ENTRIES)
def test_the_driver_entries_import_without_torch(entry):
    code = WATCH_TORCH + textwrap.dedent(
        f"""
        import importlib
        importlib.import_module({entry!r})
        if "torch" in sys.modules:
            print("torch imported by: " + " <- ".join(reversed(WatchTorch.first or ["?"])))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.stdout.strip(), f"{entry}: {result.stdout.strip()}"


# --- imports -------------------------------------------------------------------------------


def import_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for source, _, _, target, _ in imports():
        module = project_module(target)
        if module is not None and module != source:
            graph[source].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(graph) | {n for targets in graph.values() for n in targets}
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes)))
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def a_cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One closed path inside a component, to say where the cycle runs."""
    members, start = set(component), component[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & members):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    return component


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert a_cycle_through(["a", "b", "c"], graph) == ["a", "b", "c", "a"]
    module = ast.parse("import os\ndef f():\n    from train.spec import config\n")
    inside = [f is not None for n, f in function_scoped(module) if isinstance(n, ast.ImportFrom)]
    assert inside == [True]


def test_no_import_cycle_among_train_and_launch():
    graph = import_graph()
    found = [" -> ".join(a_cycle_through(c, graph)) for c in cycles(graph)]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_functions_import_no_project_module():
    """An import inside a function of a project module hides a cycle from the reader (and from
    the import order): import at the top of the module."""
    found = sorted(
        {
            f"{rel}:{line}: {target}"
            for _, rel, line, target, inside in imports()
            if inside and project_module(target) is not None
        }
    )
    assert found == [], f"{len(found)} function-level imports of project modules:\n" + "\n".join(
        found
    )


def test_functions_import_only_heavy_optional_dependencies():
    found = []
    for _, rel, line, target, inside in imports():
        top = target.split(".")[0]
        if not inside or project_module(target) is not None:
            continue  # module level, or a project module (the test above)
        if top in DEFERRED_ANYWHERE or rel in DEFERRED_IN.get(top, set()):
            continue
        if any(target.startswith(m) and rel in where for m, where in DEFERRED_SUBMODULES.items()):
            continue
        if top == "torch" and is_in(rel, TORCH_IN_LAUNCH):
            continue
        found.append(f"{rel}:{line}: {target}")
    found = sorted(set(found))
    assert found == [], f"{len(found)} function-level imports not deferring a heavy optional " + (
        "dependency:\n" + "\n".join(found)
    )


# --- sizes and names -----------------------------------------------------------------------


def test_no_function_longer_than_80_lines():
    found = []
    for rel in modules().values():
        for node in ast.walk(tree(rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append((lines, f"{rel}:{node.lineno} {node.name}: {lines} lines"))
    assert found == [], "\n".join(text for _, text in sorted(found, reverse=True))


def test_no_module_name_twice_across_train_and_launch():
    by_name = defaultdict(list)
    for rel in modules().values():
        if rel.name not in ("__init__.py", "__main__.py"):
            by_name[rel.name].append(str(rel))
    repeated = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert repeated == {}, "\n".join(f"{n}: {', '.join(p)}" for n, p in sorted(repeated.items()))


# --- layout names --------------------------------------------------------------------------


def strings(nodes: list[ast.AST | None]) -> list[str]:
    """The string literals among these nodes, looking one level into tuples, lists, sets."""
    found = []
    for node in nodes:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        found += [
            i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
        ]
    return found


def names_degrees(node: ast.AST) -> bool:
    """An operand that holds mesh dimensions: `x.degrees`, `dims`, `dim`, ..."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("degrees", "dims", "dim", "mesh_dims")


def layout_names(literals: list[str], mesh_context: bool) -> list[str]:
    """The layout names among literals. "tp" and "pp" are also mesh dimensions: beside
    dp_replicate or dp_shard, or set against a node's degrees, they name those, not a layout."""
    mesh = mesh_context or bool(set(literals) & MESH_ONLY_DIMS)
    return [s for s in literals if s in LAYOUT_NAMES and not (mesh and s in MESH_DIMS)]


def layout_name_uses(module: ast.Module) -> list[tuple[int, str]]:
    """(line, name) where a layout name is compared (==, !=, in, case) or is a dict key."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            mesh = any(names_degrees(o) for o in operands)
            found += [(node.lineno, n) for n in layout_names(strings(operands), mesh)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, n) for n in layout_names(strings(node.keys), False)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, n) for n in layout_names(strings([node.value]), False)]
    return found


def test_the_layout_name_finder_sees_each_form():
    source = textwrap.dedent(
        """
        a = name == "fsdp"
        b = name in ("zero1", "zero2")
        c = {"tp": 1}
        d = "hsdp" != name
        match name:
            case "pp_fsdp":
                pass
        e = name == "fsdp_reduce_bf16" or {"ddp_like": 1}
        f = {"pp": 1, "dp_replicate": 2, "dp_shard": 1, "tp": 2}  # mesh dimensions
        g = k in ("pp", "dp_shard") or row.degrees == ("tp",) or dim == "pp"
        """
    )
    assert sorted(n for _, n in layout_name_uses(ast.parse(source))) == [
        "fsdp",
        "hsdp",
        "pp_fsdp",
        "tp",
        "zero1",
        "zero2",
    ]


def test_layout_names_are_compared_only_in_the_catalog():
    from train.spec.catalog import CATALOG as ROWS
    from train.spec.degrees import MESH_DIMS as DIMS

    assert set(ROWS) <= LAYOUT_NAMES, set(ROWS) - LAYOUT_NAMES  # a new layout: add it above
    assert set(DIMS) == MESH_DIMS, DIMS  # a new mesh dimension: add it above
    found = [
        f"{rel}:{line}: {name!r}"
        for rel in modules().values()
        if rel != CATALOG
        for line, name in layout_name_uses(tree(rel))
    ]
    assert found == [], f"{len(found)} layout names compared outside {CATALOG}:\n" + "\n".join(
        found
    )
