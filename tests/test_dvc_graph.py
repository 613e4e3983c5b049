"""dvc.yaml is checked, not trusted: every file a stage's code imports is one of its deps, and its
`params:` are exactly what the stage reads (its `PARAMS`), so `dvc status` cannot miss a change."""

from __future__ import annotations

import ast
import importlib
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from diffinject.cli import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DVC_YAML = REPO / "dvc.yaml"
# Modules that cannot change any output, so editing them need not re-run a stage.
EXEMPT = {
    "src/diffinject/quiet.py": "log filters and progress-bar throttling: only what reaches the terminal",
    "src/diffinject/progress.py": "the training progress bar and log lines: only what reaches the terminal",
    "src/diffinject/errors.py": "the exception class: only the text of error messages",
    "src/diffinject/__init__.py": "the package docstring and version string, which no stage writes",
}
# Only config.py turns params into values: a stage reads params through its PARAMS.load alone.
PARAMS_READERS = {"section", "seed_of", "build_config"}
PARAMS_READ_EXEMPT = {
    "src/diffinject/tracking/runs.py": "register's MLflow run records every param as metadata (and names its "
                                       "MLflow Param list `params`); what register writes depends on registry.* alone",
}


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def stage_module(stage: dict) -> str:
    name = stage["cmd"].split("python -m diffinject ", 1)[1].split()[0]
    return f"diffinject.stages.{STAGES[name][0]}"


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1])


@lru_cache(maxsize=None)
def imports_of(path: Path) -> frozenset[str]:
    """The diffinject modules `path` imports anywhere in its body (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(path).split(".")  # a module's package; an __init__'s own
                base = ".".join(package[: len(package) - (node.level - 1)] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    names = set()
    for name in found:
        if name == "diffinject" or name.startswith("diffinject."):
            parts = name.split(".")
            names |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # parent packages run too
    return frozenset(n for n in names if module_path(n) is not None)


def closure(module: str) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        path = module_path(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += imports_of(path)
    return seen


def has_code(path: Path) -> bool:
    """False for a module that is only a docstring (an empty package)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def uncovered(stage: dict) -> list[str]:
    deps = [str(d) for d in stage.get("deps", [])]
    missing = []
    for path in sorted(closure(stage_module(stage))):
        rel = str(path.relative_to(REPO))
        if rel in EXEMPT or not has_code(path):
            continue
        if not any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps):
            missing.append(rel)
    return missing


def direct_params_reads(path: Path) -> list[str]:
    """`section(...)`, `params.get(...)`, `params[...]` outside config.py: reads PARAMS does not declare."""
    if path == SRC / "diffinject" / "config.py" or str(path.relative_to(REPO)) in PARAMS_READ_EXEMPT:
        return []
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in PARAMS_READERS:
                reads.append(f"{path.relative_to(REPO)}:{node.lineno} {name}()")
            if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name) \
                    and func.value.id == "params":
                reads.append(f"{path.relative_to(REPO)}:{node.lineno} params.get()")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "params":
            reads.append(f"{path.relative_to(REPO)}:{node.lineno} params[...]")
    return reads


STAGE_NAMES = sorted(dvc_stages())


FIX = "(python scripts/sync_dvc_graph.py rewrites them)"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_imported_file_is_a_dep(name):
    missing = uncovered(dvc_stages()[name])
    assert not missing, f"dvc.yaml stage {name!r} does not list what its code imports: {', '.join(missing)} {FIX}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_no_source_dep_beyond_the_code(name):
    """A source dep the stage never imports only re-runs it needlessly."""
    stage = dvc_stages()[name]
    code = {str(p.relative_to(REPO)) for p in closure(stage_module(stage))}
    extra = [d for d in map(str, stage.get("deps", [])) if d.startswith("src/")
             and not any(c == d or c.startswith(d.rstrip("/") + "/") for c in code)]
    assert not extra, f"dvc.yaml stage {name!r} lists sources its code does not import: {', '.join(extra)} {FIX}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_declared_params_are_what_the_stage_reads(name):
    stage = dvc_stages()[name]
    module = importlib.import_module(stage_module(stage))
    reads = set(module.PARAMS.keys())
    declared = {p for p in stage.get("params", []) if isinstance(p, str)}
    assert reads - declared == set(), f"dvc.yaml stage {name!r} reads undeclared params: {sorted(reads - declared)} {FIX}"
    assert declared - reads == set(), f"dvc.yaml stage {name!r} declares params it never reads: {sorted(declared - reads)} {FIX}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_code_reads_params_only_through_its_declaration(name):
    reads = [r for path in sorted(closure(stage_module(dvc_stages()[name]))) for r in direct_params_reads(path)]
    assert not reads, f"stage {name!r} reads params around its PARAMS: {'; '.join(reads)}"


def test_the_walk_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a lazy import inside a function and a parent package with code count."""
    package = tmp_path / "diffinject" / "pkg"
    package.mkdir(parents=True)
    (tmp_path / "diffinject" / "__init__.py").write_text('"""doc only"""\n')
    (package / "__init__.py").write_text("X = 1\n")
    (package / "a.py").write_text("def f():\n    from diffinject.pkg import b\n    from . import c\n")
    (package / "b.py").write_text("")
    (package / "c.py").write_text("")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    imports_of.cache_clear()
    try:
        found = {p.relative_to(tmp_path).as_posix() for p in closure("diffinject.pkg.a")}
    finally:
        imports_of.cache_clear()
    assert found == {"diffinject/__init__.py", "diffinject/pkg/__init__.py", "diffinject/pkg/a.py",
                     "diffinject/pkg/b.py", "diffinject/pkg/c.py"}
    assert not has_code(tmp_path / "diffinject" / "__init__.py") and has_code(package / "__init__.py")


# A network built around the plain ones, and the stages that use it: those that train it or load its
# checkpoints (evaluate and register load any model; inject and fair_finetune the pilot's reference,
# which may be DisEnt).
NETWORK_USERS = {"src/diffinject/models/autoencoder.py": {"ae_debias", "evaluate", "register"},
                 "src/diffinject/models/disent_net.py": {"disent", "debiased_disent", "evaluate", "register", "inject",
                                                         "fair_finetune"}}


@pytest.mark.parametrize("network", sorted(NETWORK_USERS))
def test_an_edit_of_one_network_reruns_only_the_stages_that_use_it(network):
    """Each loader imports the network it rebuilds (checkpoint.load_classifier's `architectures`) and
    no shared module imports every architecture, so the stages whose code deps name a network are
    exactly those that train or load it."""
    stages = dvc_stages()
    users = {name for name, s in stages.items() if network in {str(p.relative_to(REPO)) for p in closure(stage_module(s))}}
    assert users == NETWORK_USERS[network] & set(stages)


@pytest.mark.parametrize("concept", ["src/diffinject/diffusion/operators.py", "src/diffinject/pilot/"])
def test_the_ddpm_is_not_retrained_for_a_new_operator_or_pilot_candidate(concept):
    """Adding an operator edits operators.py, a pilot candidate the pilot/ package: neither is in
    train_diffusion's or invert's code, so neither re-trains the DDPM or re-inverts (the probes capture
    features through the same site hooks that mix them, so they re-run: ~30 s)."""
    stages = dvc_stages()
    for name in ("train_diffusion", "invert"):
        code = {str(p.relative_to(REPO)) for p in closure(stage_module(stages[name]))}
        assert not [c for c in code if c.startswith(concept)], f"{name} imports {concept}"
