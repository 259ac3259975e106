"""Imports only run downward (DESIGN.md): cli -> launch -> api -> engine -> algorithms,
buffers, data, models, store -> grads, projection, config -> errors. Checked on the source
(every ``import``/``from ... import``, also those inside functions), so a lazy import that
reaches up is caught too."""

import ast
import collections
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cluctl"

# higher imports lower, never the other way; modules of one layer do not import each other
LAYERS = {
    "errors": 0, "atomic": 0,
    "cluctl": 1, "config": 1, "devices": 1, "faults": 1, "masking": 1,
    "grads": 2, "projection": 2, "metrics": 2, "sequences": 2, "thesis": 2,
    "refs": 3, "models": 3, "data": 3, "store": 3,
    "learning": 4, "unlearning": 4,
    "resolve": 5, "buffers": 5, "plots": 5,
    "engine": 6,
    "api": 7,
    "launch": 8,
    "cli": 9,
    "__main__": 10,
}
# module-level cycles left (to be removed; a new one fails the test)
KNOWN_CYCLES: set = set()


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in mods.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != name:
                    edges[name].add(t)
    return edges


def _layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "cluctl"
    assert top in LAYERS, f"{module}: add its package to LAYERS in tests/test_layers.py"
    return top, LAYERS[top]


def test_imports_only_run_downward():
    mods = _modules()
    bad = []
    for a, targets in _edges(mods).items():
        ta, la = _layer(a)
        for b in targets:
            tb, lb = _layer(b)
            if ta != tb and (lb > la or (lb == la and tb != "cluctl")):
                bad.append(f"{a} (layer {la}) imports {b} (layer {lb})")
    assert not bad, "\n".join(sorted(bad))


def test_no_new_import_cycle():
    edges = _edges(_modules())
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(frozenset(comp))

    for v in list(_modules()):
        if v not in index:
            visit(v)
    # a package's __init__ importing its own submodules (and them importing the package)
    # is how the registries discover their modules: not a cycle between modules of code
    real = [c for c in sccs if not any(m.count(".") == 1 and all(n.startswith(m + ".") or n == m for n in c)
                                       for m in c)]
    assert set(real) <= KNOWN_CYCLES, [sorted(c) for c in real if c not in KNOWN_CYCLES]
