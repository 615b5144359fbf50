"""The package's shape: no module imports (directly or lazily) a module that imports it back,
and `import loraflip` needs numpy and nothing else outside the standard library."""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

PACKAGE = "loraflip"


def package_dir() -> Path:
    """The folder of the package under test, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations, "loraflip is not importable"
    return Path(next(iter(spec.submodule_search_locations)))


def module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def imports_within_package(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its text: at the top, in
    functions (lazily) or under an `if`. `from . import x` names module x where x is one, else
    the package itself (x is then one of its attributes)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{path.name}: an import above the package "
                                     f"({'.' * node.level}{node.module or ''})")
            if node.level == 1:
                source = PACKAGE + ("." + node.module if node.module else "")
            elif node.module and node.module.split(".")[0] == PACKAGE:
                source = node.module
            else:
                continue
            if source == PACKAGE:
                for a in node.names:
                    sub = f"{PACKAGE}.{a.name}"
                    out.add(sub if sub in modules else PACKAGE)
            else:
                out.add(source)
    return {m for m in out if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(package_dir().glob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_within_package(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_module_of_the_package_imports_a_module_that_imports_it_back():
    graph = import_graph()
    assert "loraflip._client" in graph and "loraflip.lora" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_lazy_import_inside_a_function_counts(tmp_path):
    (tmp_path / "_x.py").write_text("def f():\n    from ._y import g\n")
    (tmp_path / "_y.py").write_text("from . import _x\n")
    modules = {f"{PACKAGE}._x", f"{PACKAGE}._y"}
    assert imports_within_package(tmp_path / "_x.py", modules) == {f"{PACKAGE}._y"}
    assert imports_within_package(tmp_path / "_y.py", modules) == {f"{PACKAGE}._x"}


def test_importing_loraflip_needs_only_numpy():
    """Run in a fresh interpreter: torch, ml_dtypes and the rest are imported only when a call
    needs them. Compared with what importing numpy alone loads, so that numpy's own imports and
    the interpreter's startup do not count."""
    code = (
        "import sys\n"
        "def third_party():\n"
        "    return {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "import numpy\n"
        "before = third_party()\n"
        "import loraflip\n"
        "assert 'torch' not in sys.modules, 'import loraflip imported torch'\n"
        "extra = third_party() - before - {'loraflip'}\n"
        "assert not extra, f'import loraflip imported {sorted(extra)}'\n"
    )
    path = os.pathsep.join(p for p in (str(package_dir().parent), os.environ.get("PYTHONPATH"))
                           if p)
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=path),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
