"""Mutation testing for pefs: small, deterministic, resumable, no dependencies beyond the test suite.

Each target module is parsed with ``ast``; a fixed set of operators yields mutants (one change each), a seeded
sample of them is applied one at a time to a module in a COPY of the repository (the worktree's files are never
touched), and the module's mapped test files run against it (``pytest -x -q -p no:cacheprovider``, with a timeout of
3x the clean run). Outcomes (killed / survived / timeout) go to ``tests/mutation.json`` in a fixed order; a rerun
skips mutants already recorded. ``--report`` renders ``tests/MUTATION.md`` from that JSON.

    python tools/mutate.py                      # every module in MODULES, resuming
    python tools/mutate.py --module pefs/results/stats.py --max 5
    python tools/mutate.py --only-survivors     # re-run the recorded survivors (after adding tests)
    python tools/mutate.py --report             # tests/MUTATION.md from tests/mutation.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "mutation.json"
PAGE = ROOT / "tests" / "MUTATION.md"
SEED = 25
#: at most this many mutants per module (a seeded sample when a module yields more)
PER_MODULE = 6
#: other sample sizes: larger where the module is large and its tests fast, smaller for the strategies, whose
#: tests train tiny models (the run is budgeted at well under 60 CPU-minutes on a shared 2-core machine)
LIMITS = {"pefs/results/stats.py": 20, "pefs/results/store.py": 10, "pefs/results/claims.py": 8,
          "pefs/data/sampling.py": 10, "pefs/export/formats.py": 8, "pefs/heads/logistic.py": 8,
          **{f"pefs/strategies/{m}.py": 4 for m in ("adapter", "base", "bias")},
          **{f"pefs/strategies/{m}.py": 3 for m in ("common", "full", "last_k", "linear", "lora", "norm",
                                                   "peft_method", "peft_tuner", "registry", "self_prompt", "spec",
                                                   "ssf", "vpt")}}

#: module -> the test files (and an optional ``-k`` expression) that own its behaviour
_S, _C, _P = "tests/test_strategies.py", "tests/test_strategy_contract.py", "tests/test_strategies_prompts.py"
#: the store tests that need no sweep subprocess (those take ~40 s a run)
_STORE_K = ("torn or glued or stale or not_rows or refresh or empty or record or ok_and_failed or shard_path "
            "or jsonl_file or descriptor or claim")
_PEFT_K = ("battery and (peft:ia3-vit or bias+lora-vit) or ia3_default or bad_options or bad_targets "
           "or peft_refusal")
MODULES: dict[str, tuple[str, ...]] = {
    "pefs/strategies/adapter.py": (_P, "-k", "battery and adapter-resnet or cnn_adapter"),
    "pefs/strategies/base.py": (_S, _C, "-k",
                                "battery and (lora-vit or bias-resnet) or composed or cast_to or promises"),
    "pefs/strategies/bias.py": (_S, _C, "-k",
                                "battery and bias-vit or bias-expect or bitfit or without_targets or merge_folds"),
    "pefs/strategies/common.py": (_S, _C, "-k", "battery and (lora-vit or ssf-resnet or norm-resnet) or match_"),
    "pefs/strategies/full.py": (_S, _C, "-k", "battery and full-vit or conflicting or merge_folds"),
    "pefs/strategies/last_k.py": (_S, _C, "-k",
                                  "battery and (last-k-vit or last-k-resnet) or merge_folds or last_k_one"),
    "pefs/strategies/linear.py": (_S, _C, "-k", "battery and linear-vit or merge_folds or trunk_frozen"),
    "pefs/strategies/lora.py": (_S, _C, "-k",
                                "battery and (lora-vit or lora-resnet) or lora_r8 or lora-expect or lora_options"),
    "pefs/strategies/norm.py": (_S, _C, "-k",
                                "battery and norm-vit or norm_types or norm_count or norm-expect or without_targets "
                                "or bad_options or merge_folds"),
    "pefs/strategies/peft_method.py": (_S, _C, "-k", _PEFT_K),
    "pefs/strategies/peft_tuner.py": (_S, _C, "-k", _PEFT_K),
    "pefs/strategies/registry.py": (_S, _C, "-k", "listing or bad_options or conflicting or linear-vit"),
    "pefs/strategies/self_prompt.py": (_P, "-k", "battery and self-prompt-vit or self_prompt_reads or bad_options"),
    "pefs/strategies/spec.py": (_S, _C, "-k", "composed or bad or conflicting or listing or applicable"),
    "pefs/strategies/ssf.py": (_S, _C, "-k", "battery and ssf-vit or ssf_ or bad_targets"),
    "pefs/strategies/vpt.py": (_P, "-k",
                               "battery and vpt-vit or vpt_inserts or pixel_prompt or token_prompts or vpt_deep"),
    "pefs/heads/base.py": ("tests/test_heads.py",),
    "pefs/heads/linear.py": ("tests/test_heads.py",),
    "pefs/heads/logistic.py": ("tests/test_heads.py", "tests/test_probe.py", "-k", "not sklearn and not in_tune"),
    "pefs/heads/patch_match.py": ("tests/test_heads.py",),
    "pefs/heads/prototype.py": ("tests/test_heads.py",),
    "pefs/heads/registry.py": ("tests/test_heads.py",),
    "pefs/data/sampling.py": ("tests/test_data.py", "tests/test_validation_split.py", "tests/test_protocols.py", "-k",
                              "kshot or shots or episodes_have or bad_episode or episode_support or one_shot_episode"),
    "pefs/runtime/feature_store.py": ("tests/test_feature_store.py",),
    "pefs/results/store.py": ("tests/test_store_concurrency.py", "tests/test_records.py", "-k", _STORE_K),
    "pefs/results/claims.py": ("tests/test_store_concurrency.py", "-k", _STORE_K),
    "pefs/model/directory.py": ("tests/test_model_dir.py",),
    "pefs/export/formats.py": ("tests/test_predict_export.py", "tests/test_mutation_kills.py"),
    "pefs/export/peft_format.py": ("tests/test_peft_format.py",),
    "pefs/results/stats.py": ("tests/test_stats.py",),
}

#: survivors that change no behaviour, by key, with the reason (the report leaves them out of the score). A key
#: names the node's position in the module's ``ast.walk`` order, so an edit to the module can shift it: re-check
#: these after changing a listed module (``--list`` shows the current keys).
EQUIVALENT: dict[str, str] = {
    "pefs/results/stats.py:381:cmp": "`t_cdf` at t = 0: both branches give 0.5 (the two-sided p is 1)",
    "pefs/results/stats.py:888:const": "bracketing the quantile by tripling instead of doubling `hi` converges to "
                                       "the same root within 1e-12",
    "pefs/results/stats.py:960:cmp": "Lentz's guard: at abs(c) == 1e-300 exactly both branches leave c = 1e-300",
    "pefs/results/claims.py:32:const": "a timing constant (an empty claim is stale after 'a few seconds'); the "
                                       "test reads UNWRITTEN_S from the module, and 5 or 6 s changes no outcome",
    "pefs/data/sampling.py:1286:const": "the seed offset of the held-out split only separates its random stream "
                                        "from the shots'; another constant gives another split with every tested "
                                        "property (stratified, seeded, disjoint); pinning the exact draw would "
                                        "hard-code a result",
    "pefs/runtime/feature_store.py:1078:const": "the warning's `stacklevel` only changes which caller line Python "
                                                "attributes it to; its text and the skipped write are the same",
    "pefs/export/peft_format.py:250:drop_call": "peft's `get_peft_model` reuses a tuner layer of its own type that "
                                                "is already in place (`update_layer`), and every trained tensor is "
                                                "then copied over, so leaving the tuners in gives the same adapter",
    "pefs/export/peft_format.py:180:drop_call": "the installed peft already writes `base_model_name_or_path` and "
                                                "`revision` from the config (the test checks the written value); "
                                                "the rewrite only fills them where a peft version leaves them empty",
    "pefs/results/claims.py:150:return_none": "`_alive` is only read as `not _alive(...)`: None and False both "
                                              "mean 'gone'",
    "pefs/results/claims.py:355:cmp": "`age < 5 s` or `<= 5 s` differ only when a float age equals 5.0 exactly",
    "pefs/strategies/adapter.py:154:drop_call": "the adapters are new modules, whose parameters already require "
                                                "grad; `set_trainable` only states it (the battery checks they train)",
}

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_BOOL = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass(frozen=True)
class Mutant:
    """One change: the ``index``-th node of the module's ``ast.walk`` order, mutated by ``op``."""

    module: str
    index: int
    op: str
    line: int
    before: str
    after: str

    @property
    def key(self) -> str:
        return f"{self.module}:{self.index}:{self.op}"


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            out.add(id(body[0]))
    return out


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """Nodes inside type annotations (mutating them changes nothing at run time)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        anns = [getattr(node, "annotation", None), getattr(node, "returns", None)]
        for ann in anns:
            if isinstance(ann, ast.AST):
                out.update(id(n) for n in ast.walk(ann))
    return out


def _ops(node: ast.AST, skip: set[int]) -> list[str]:
    """The operator names that apply to ``node``."""
    if id(node) in skip:
        return []
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP:
        return ["cmp"]
    if isinstance(node, ast.BoolOp):
        return ["bool"]
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return ["arith"]
    if isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
        return ["const"]
    if isinstance(node, ast.Return) and node.value is not None \
            and not (isinstance(node.value, ast.Constant) and node.value.value is None):
        return ["return_none"]
    if isinstance(node, ast.Raise):
        return ["drop_raise"]
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return ["drop_call"]
    return []


def _tweak(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if value == 0:
        return 1
    if value == 1:
        return 0
    return value + 1  # type: ignore[operator]


def _apply(node: ast.AST, op: str) -> ast.AST:
    """``node`` mutated by ``op`` (in place where possible; the replacement node otherwise)."""
    if op == "cmp":
        node.ops = [_CMP[type(node.ops[0])]()]  # type: ignore[attr-defined]
    elif op == "bool":
        node.op = _BOOL[type(node.op)]()  # type: ignore[attr-defined]
    elif op == "arith":
        node.op = _BIN[type(node.op)]()  # type: ignore[attr-defined]
    elif op == "const":
        node.value = _tweak(node.value)  # type: ignore[attr-defined]
    elif op == "return_none":
        node.value = ast.Constant(None)  # type: ignore[attr-defined]
    elif op in ("drop_raise", "drop_call"):
        return ast.copy_location(ast.Pass(), node)
    return node


def _points(tree: ast.AST) -> list[tuple[int, ast.AST, str]]:
    skip = _docstring_nodes(tree) | _annotation_nodes(tree)
    return [(i, node, op) for i, node in enumerate(ast.walk(tree)) for op in _ops(node, skip)]


def _mutated_source(source: str, index: int, op: str) -> str:
    """The module's source with the one mutation applied (statements replaced in their parent's list)."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    target = nodes[index]
    new = _apply(target, op)
    if new is not target:
        for parent in nodes:
            for field, value in ast.iter_fields(parent):
                if isinstance(value, list) and any(v is target for v in value):
                    setattr(parent, field, [new if v is target else v for v in value])
    return ast.unparse(ast.fix_missing_locations(tree))


def mutants(module: str, limit: int | None = None) -> list[Mutant]:
    """The module's mutants: every applicable point, then a seeded sample of ``limit`` in source order."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    plain = ast.unparse(tree)
    found = []
    for index, node, op in _points(tree):
        text = _mutated_source(source, index, op)
        if text == plain:
            continue
        before = ast.unparse(node).splitlines()[0][:80]
        after_tree = ast.parse(source)
        after = ast.unparse(_apply(list(ast.walk(after_tree))[index], op)).splitlines()[0][:80]
        found.append(Mutant(module, index, op, getattr(node, "lineno", 0), before, after))
    limit = LIMITS.get(module, PER_MODULE) if limit is None else limit
    random.Random(f"{SEED}:{module}").shuffle(found)  # seeded; a smaller limit takes a prefix of a larger one
    return sorted(found[:limit], key=lambda m: (m.line, m.index, m.op))


def _load() -> dict:
    return json.loads(DATA.read_text()) if DATA.exists() else {"seed": SEED, "per_module": PER_MODULE,
                                                              "modules": {}, "mutants": {}}


def _save(data: dict, module: str) -> None:
    """Merge this run's module into the JSON on disk (under a lock: two runs on different modules may share it)."""
    import fcntl

    sys.path.insert(0, str(ROOT))
    from pefs.config.files import atomic_write

    with open(Path(tempfile.gettempdir()) / "pefs-mutation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = _load()
        disk["modules"][module] = data["modules"][module]
        disk["modules"] = dict(sorted(disk["modules"].items()))
        disk["mutants"].update({k: v for k, v in data["mutants"].items() if k.startswith(module + ":")})
        disk["mutants"] = dict(sorted(disk["mutants"].items(), key=lambda kv: _order(kv[0])))
        with atomic_write(DATA, "mutation results") as f:
            f.write(json.dumps(disk, indent=1) + "\n")


def _order(key: str) -> tuple:
    module, index, op = key.split(":")
    return (module, int(index), op)


def _copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", "*.egg-info", ".ruff_cache",
                                    ".pytest_cache", "build")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def _pytest(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start
    return ("survived" if proc.returncode == 0 else "killed"), time.monotonic() - start


def run(modules: list[str], limit: int | None, only_survivors: bool, recheck: bool = False) -> None:
    """Run each module's sampled mutants not yet recorded (or only its recorded survivors), saving after each."""
    data = _load()
    with tempfile.TemporaryDirectory(prefix="pefs-mutate-") as tmp:
        copy = Path(tmp)
        _copy_repo(copy)
        for module in modules:
            data = _load()  # another run may have recorded this module meanwhile
            tests = MODULES[module]
            todo = mutants(module, limit)
            data["modules"][module] = {"tests": list(tests), "points": len(_points(ast.parse((ROOT / module)
                                                                                          .read_text()))),
                                       "sampled": len(todo)}
            if recheck:
                todo = [m for m in todo if data["mutants"].get(m.key, {}).get("first") == "survived"
                        and m.key not in EQUIVALENT]
            elif only_survivors:
                todo = [m for m in todo if data["mutants"].get(m.key, {}).get("status") == "survived"
                        and m.key not in EQUIVALENT]
            else:
                todo = [m for m in todo if m.key not in data["mutants"]]
            if not todo:
                continue
            original = (ROOT / module).read_text()
            status, clean = _pytest(copy, tests, timeout=900)
            if status != "survived":
                print(f"{module}: SKIPPED, its tests {tests} fail on the unmutated code; fix that first", flush=True)
                continue
            print(f"{module}: clean run {clean:.1f}s, {len(todo)} mutants", flush=True)
            try:
                for m in todo:
                    (copy / module).write_text(_mutated_source(original, m.index, m.op))
                    status, took = _pytest(copy, tests, timeout=max(10.0, 3 * clean))
                    old = data["mutants"].get(m.key)
                    data["mutants"][m.key] = {"line": m.line, "op": m.op, "before": m.before, "after": m.after,
                                              "status": status, "seconds": round(took, 1),
                                              "first": old.get("first", old["status"]) if old else status}
                    _save(data, module)
                    print(f"  {status:8s} {m.key} line {m.line}: {m.before!r} -> {m.after!r}", flush=True)
            finally:
                (copy / module).write_text(original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="only this module (repeatable)")
    parser.add_argument("--max", type=int, help=f"mutants per module (seeded sample; default {PER_MODULE}, or "
                        "LIMITS's larger sample where the tests are fast)")
    parser.add_argument("--only-survivors", action="store_true",
                        help="re-run the recorded survivors (not those listed as equivalent)")
    parser.add_argument("--recheck", action="store_true",
                        help="re-run every mutant that survived its first run (confirms the tests added for them)")
    parser.add_argument("--report", action="store_true", help="render tests/MUTATION.md from tests/mutation.json")
    parser.add_argument("--list", action="store_true", help="print the sampled mutants and exit")
    args = parser.parse_args(argv)
    modules = args.module or list(MODULES)
    if args.report:
        sys.path.insert(0, str(ROOT))
        from mutation_report import render  # tools/ is this script's folder, first on sys.path

        from pefs.config.files import atomic_write

        with atomic_write(PAGE, "mutation page") as f:
            f.write(render(_load(), EQUIVALENT))
        return 0
    if args.list:
        for module in modules:
            for m in mutants(module, args.max):
                print(f"{m.key} line {m.line}: {m.before!r} -> {m.after!r}")
        return 0
    run(modules, args.max, args.only_survivors, args.recheck)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
