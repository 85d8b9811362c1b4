"""The package's structure, measured from its source: long functions, import cycles, private imports, and which
files spell the run directory's file names. tests/test_structure.py holds the package to the targets.

    python bench/structure.py            # the figures, as a table
    python bench/structure.py --json

Imports are read from the syntax tree, module level and function level alike: an import placed inside a function
to dodge a cycle is still an edge of the graph.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "whetstone"
MAX_FUNCTION_LINES = 100

# What a run directory holds at its top level (whetstone/rundir.py RUN.entries), as a path component.
RUN_DIR_NAMES = ("config.yaml", "metrics.jsonl", "summary.json", "samples.jsonl", "report.html", "trackers.json",
                 "canaries.json", "knowledge.json", "augment.json", "stages.json", "stages.md", "lineage.json",
                 ".whetstone-run", "checkpoints")
# Words too common to count as a constant: these count where a path is joined with them (`path / "adapter"`).
DIRECTORY_NAMES = ("adapter", "model", "merged", "stages", "export")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[int, str]]:
    """(lines, "module:qualname") for each function longer than `limit` lines, longest first."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for qualname, node in _functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((lines, f"{name}:{qualname}"))
    return sorted(found, reverse=True)


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")


def imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name or "")}, for imports of whetstone's own modules."""
    known = modules()
    graph: dict[str, set[tuple[str, str]]] = {}
    for name, path in known.items():
        edges = graph.setdefault(name, set())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update((alias.name, "") for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base not in known:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add((sub, "") if sub in known else (base, alias.name))
    return graph


def cycles() -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {name: {target for target, _ in edges if target != name} for name, edges in imports().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def private_imports() -> list[str]:
    """"importer -> module.name" for each private name (a leading underscore) imported from another module."""
    return sorted(f"{importer} -> {module}.{name}" for importer, edges in imports().items()
                  for module, name in edges if name.startswith("_") and module != importer)


def run_dir_name_files() -> dict[str, list[str]]:
    """file -> the run directory names it spells: a file name as a string constant (or a relative path's last part),
    a directory name where a path is joined with it."""
    found = {}
    for name, path in modules().items():
        seen = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_run_file(node.value):
                seen.add(node.value)
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                    and node.right.value in DIRECTORY_NAMES:
                seen.add(node.right.value)
        if seen:
            found[str(path.relative_to(ROOT))] = sorted(seen)
    return found


def _names_run_file(text: str) -> bool:
    """A constant that is one of the run directory's names, or a relative path ending in one of its files."""
    if text in RUN_DIR_NAMES:
        return True
    return "/" in text and " " not in text and text.rsplit("/", 1)[1] in RUN_DIR_NAMES and "." in text.rsplit("/", 1)[1]


def figures() -> dict:
    return {"longest_functions": [f"{lines} {name}" for lines, name in long_functions(0)[:10]],
            "functions_over_limit": [f"{lines} {name}" for lines, name in long_functions()],
            "import_cycles": cycles(),
            "private_imports": private_imports(),
            "run_dir_name_files": run_dir_name_files()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    found = figures()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"longest functions (limit {MAX_FUNCTION_LINES} lines):")
    for line in found["longest_functions"]:
        print(f"  {line}")
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(found['functions_over_limit'])}")
    print(f"import cycles: {len(found['import_cycles'])}")
    for component in found["import_cycles"]:
        print(f"  {len(component)} modules: {', '.join(component)}")
    print(f"private names imported from another module: {len(found['private_imports'])}")
    for line in found["private_imports"]:
        print(f"  {line}")
    print(f"files spelling the run directory's names: {len(found['run_dir_name_files'])}")
    for path, names in sorted(found["run_dir_name_files"].items()):
        print(f"  {path}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
