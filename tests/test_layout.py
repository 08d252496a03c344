"""The package's shape: every module imports on its own (no hidden dependence on import order), and
no import cycle comes back (module-level imports, or imports inside functions)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "gen_dist"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


# Each module is imported in a fresh child of one driver process: the driver has imported only
# third-party libraries (torch, torchvision, accelerate, omegaconf, pytorch-fid: seconds a child would spend on each of the ~90
# modules, and not what is being tested), never a gen_dist module, so each child starts without any.
# Two children at a time (two cores).
DRIVER = """
import os, sys, traceback
import numpy, torch, torchvision, accelerate, omegaconf, pytorch_fid.inception
failed, running, todo = [], {}, list(sys.argv[1:])
while todo or running:
    while todo and len(running) < 2:
        name = todo.pop(0)
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        running[pid] = name
    pid, status = os.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(running[pid])
    del running[pid]
print("FAILED:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", DRIVER, *MODULES], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "gen_dist.training.trainer" in MODULES and len(MODULES) > 50


def _imports(path: Path, name: str) -> set:
    """gen_dist modules imported by the module ``name``, at module level or inside its functions (an
    import moved into a function to dodge a cycle still ties the two modules both ways)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 folders
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from gen_dist.data import shards`
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict) -> list:
    """One cycle of the directed graph as a list of nodes (first == last), or [] if there is none."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    graph = {_module_name(path): _imports(path, _module_name(path)) for path in PACKAGE.rglob("*.py")}
    # a package's __init__ may hand on names of its own submodules (that is not a cycle of the code)
    for name, deps in graph.items():
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file():
            graph[name] = {d for d in deps if not d.startswith(name + ".")}
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)
