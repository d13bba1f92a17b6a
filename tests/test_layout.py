"""The package's shape: data flows one way through its sub-packages, with no import cycles.

Read from the source (every import, the lazy ones inside functions too; only
`if TYPE_CHECKING:` blocks are left out), so a newcomer's map in the README and
the code cannot drift apart unnoticed.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "scripts" / "deforum_wan"
# Lower layers never import higher ones: settings -> ... -> plan (core), the enhancer, the renderer,
# the service around it, the web UI, and the command line on top.
LAYERS = ["core", "enhance", "renderer", "service", "webui", "top"]
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "gradio", "fastapi", "uvicorn", "PIL", "cv2"}
MAX_LINES = 600


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "top"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level third-party names) imported anywhere outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node) if n is not node.test}
    module, is_pkg = _module(path), path.name == "__init__.py"
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "deforum_wan":
                theirs.add(target.split(".")[0])
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                exists = (PKG.parent / (candidate.replace(".", "/") + ".py")).is_file() or (
                    PKG.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                ours.add(candidate if exists else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == "deforum_wan" else theirs).add(
                    alias.name if alias.name.startswith("deforum_wan") else alias.name.split(".")[0])
    return ours - {module}, theirs


GRAPH = {_module(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = {m: ours for m, (ours, _theirs) in GRAPH.items()}
    edges = {m: {t for t in targets if t != "deforum_wan"} for m, targets in edges.items()}  # the root is empty
    assert _cycles(edges) == []


def test_the_graph_sees_lazy_imports():
    """The reader must see imports inside functions, or a cycle through one would pass unnoticed."""
    cli_targets = GRAPH["deforum_wan.cli"][0]
    assert "deforum_wan.service.worker" in cli_targets  # imported inside cmd_worker only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_only_import_downwards():
    wrong = []
    for module, (ours, _theirs) in GRAPH.items():
        mine = LAYERS.index(_layer(module))
        for target in ours:
            if target != "deforum_wan" and LAYERS.index(_layer(target)) > mine:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_core_is_pure():
    """settings, schedules, prompts, seeds, movement and plan: numbers in, frozen data out."""
    for module, (_ours, theirs) in GRAPH.items():
        if _layer(module) == "core":
            assert not theirs & HEAVY, (module, theirs & HEAVY)
            assert not theirs & {"subprocess", "socket", "urllib", "sqlite3", "threading", "shutil"}, (module, theirs)


def test_modules_are_small_and_say_what_they_own():
    for path in PKG.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)}: {len(text.splitlines())} lines"
        if path.name != "__main__.py":
            assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(REPO)} has no opening docstring"


def test_the_readme_layout_matches_the_tree():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Project layout", 1)[1].split("\n## ", 1)[0].split("```")[1]  # the tree drawing
    listed = set(re.findall(r"([\w/]+\.py)", section))
    folders = {m.rstrip("/") for m in re.findall(r"^\s+(\w+/)\s", section, flags=re.M)}
    tree = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = {name.split("/")[-1] for name in listed}
    missing = sorted(t for t in tree if t.split("/")[-1] not in named)
    assert missing == [], f"modules the README's layout does not list: {missing}"
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert packages <= folders, f"sub-packages missing from the README's layout: {sorted(packages - folders)}"
    gone = sorted(n for n in named if not list(PKG.rglob(n)) and not (REPO / n).exists() and n != "deforum_wan_tab.py")
    assert gone == [], f"the README's layout names files that do not exist: {gone}"
