"""The architecture, kept true: imports point down the layers, readers of results need no torch, no private
names cross modules, no cycles, family knowledge stays in ``backbones/``, small functions (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pefs"

#: package -> layer; a module may import its own layer or lower ones, never a higher one
LAYERS = {"pefs": 0, "pefs.errors": 0, "pefs.config": 1, "pefs.results": 2, "pefs.backbones": 2, "pefs.data": 3,
          "pefs.heads": 3, "pefs.strategies": 3, "pefs.model": 4, "pefs.runtime": 4, "pefs.protocols": 5,
          "pefs.pretrain": 5, "pefs.export": 6, "pefs.sweep": 6, "pefs.cli": 7}
#: the packages that must import without torch (reading results, configs, the CLI's help)
TORCH_FREE = ("pefs.config", "pefs.results", "pefs.heads.registry", "pefs.sweep.recipe")
#: model-name and layer-name spellings of backbone families; outside ``backbones/`` no code string (help examples
#: of the CLI and the default model's name aside) may contain them: code asks the Backbone description instead
FAMILY_WORDS = re.compile(r"(?<![a-z])(vit|deit|eva|beit|swin|convnext|resnet|efficientnet|dinov2|clip|qkv|fc1|fc2)"
                          r"(?![a-z])")
#: (module, string) pairs allowed to name a model: the default model is a setting
FAMILY_ALLOWED = {("pefs.config.run", "efficientnet_lite0.offline")}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body for n in ast.walk(stmt)}


def _imports() -> dict[str, list[tuple[str, str]]]:
    """Module -> [(imported pefs module, imported name)] for every import in pefs/ that runs, at any depth."""
    mods = _modules()
    out: dict[str, list[tuple[str, str]]] = {m: [] for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        typing_only = _type_checking_blocks(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pefs"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    out[m].append((full, "") if full in mods else (node.module, a.name))
            elif isinstance(node, ast.Import):
                out[m] += [(a.name, "") for a in node.names if a.name.startswith("pefs")]
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package (and to docs/ARCHITECTURE.md)")


def test_every_package_has_a_layer():
    for m in _modules():
        _layer(m)


def test_imports_point_down_the_layers():
    up = sorted(f"{m} -> {t}" for m, imports in _imports().items() for t, _ in imports
                if m != "pefs" and _layer(t) > _layer(m))
    assert up == []


def test_readers_of_results_and_configs_import_no_torch():
    code = (f"import sys, {', '.join(TORCH_FREE)}, pefs.results.report.markdown, pefs.results.report.plots; "
            "print(sorted(m for m in ('torch', 'timm', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_imports_another_modules_private_names():
    bad = [(m, f"{target}.{name}") for m, imports in _imports().items() for target, name in imports
           if name.startswith("_")]
    assert bad == []


def test_no_import_cycles():
    graph = {m: {t for t, _ in imports if t != m and not t.startswith(m + ".")} for m, imports in _imports().items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph.get(m, ()):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path[path.index(t):], t])
            if t in graph and not state.get(t):
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [m])


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_family_and_model_names_appear_only_in_backbones():
    """A strategy, the runtime or a protocol never decides by a family's or a model's name: they ask the
    Backbone description (adding a family touches only pefs/backbones/)."""
    bad = []
    for m, p in _modules().items():
        if m.startswith(("pefs.backbones", "pefs.cli")):
            continue
        for s in _code_strings(ast.parse(p.read_text())):
            if FAMILY_WORDS.search(s.value) and (m, s.value) not in FAMILY_ALLOWED:
                bad.append(f"{p.relative_to(ROOT)}:{s.lineno}: {s.value[:60]!r}")
    assert bad == []


def test_one_place_resolves_the_default_learning_rate():
    defs = [f"{m}.{n.name}" for m, p in _modules().items() for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name == "default_lr"]
    assert defs == ["pefs.strategies.spec.default_lr"]


def test_no_function_over_60_lines():
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_one_atomic_writer():
    """Every file pefs writes whole goes through pefs.config.files (temporary name, fsync, rename)."""
    bad = [f"{p.relative_to(ROOT)}" for p in PACKAGE.rglob("*.py")
           if p.name != "files.py" and re.search(r"os\.replace\(|\.replace\((tmp|path|out)\b", p.read_text())]
    assert bad == []
