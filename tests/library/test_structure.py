"""The shape of the code: no import cycles (function-local imports included), no version-string branches, a cheap
``import colorize`` with its public API, nothing named like a standard-library module."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from _helpers import REPO

PACKAGES = ("colorize", "nodes", "training")


def project_modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def imported_modules(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (module level, functions, TYPE_CHECKING blocks)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" for a in node.names]  # a submodule if there is one, else the module
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_function_local_cycle(tmp_path: Path) -> None:
    """The checker itself: a cycle made only of an import inside a function is found."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import g\n")
    mods = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {m: imported_modules(m, p, mods) for m, p in mods.items()}
    assert cycles(graph) == [["a", "b"]]


def test_no_import_cycles_among_the_project_modules() -> None:
    mods = project_modules()
    graph = {m: imported_modules(m, p, mods) for m, p in mods.items()}
    # A package's __init__ re-exporting a submodule that imports a sibling through the package is the usual
    # package face; a cycle counts when two plain modules are in it.
    real = [c for c in cycles(graph) if sum(mods[m].name != "__init__.py" for m in c) >= 2]
    assert real == [], real


def test_no_code_branches_on_version_strings() -> None:
    """Which family a model is decides through the registry (``colorize.families``), never by string compares."""
    rule = re.compile(r"version ?[!=]= ?['\"](mult|switch|v2)")
    hits = [f"{p.relative_to(REPO)}:{i}" for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if rule.search(line)]
    assert hits == []


def test_no_module_is_named_like_a_standard_library_module() -> None:
    shadowing = sorted(str(p.relative_to(REPO)) for m, p in project_modules().items()
                       if p.name != "__init__.py" and p.stem in sys.stdlib_module_names)
    assert shadowing == []


def test_import_colorize_is_cheap_and_gives_the_public_api() -> None:
    script = ("import sys, time; t = time.perf_counter(); import colorize; dt = time.perf_counter() - t; "
              "heavy = [m for m in ('torch', 'open_clip', 'safetensors') if m in sys.modules]; "
              "print(heavy, colorize.__version__); "
              "print(colorize.Colorizer.__name__, colorize.GenerationSettings.__name__, "
              "colorize.EnhanceSettings.__name__, colorize.InputError.__name__, sorted(colorize.FAMILIES)); "
              "print('open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    heavy, names, clip_loaded = out.stdout.strip().splitlines()
    assert heavy.startswith("[] ")  # neither torch nor open_clip nor safetensors on `import colorize`
    assert names == "Colorizer GenerationSettings EnhanceSettings InputError ['gan', 'mult', 'sdxl', 'switch', 'v2', 'xlv2']"
    assert clip_loaded == "False"  # the pipeline's names do not pull open_clip in either


def test_the_public_names_are_documented_and_resolve() -> None:
    import colorize

    assert set(colorize.__all__) <= set(dir(colorize))
    for name in colorize.__all__:
        assert getattr(colorize, name) is not None
    assert "Colorizer.from_files" in (colorize.__doc__ or "")
