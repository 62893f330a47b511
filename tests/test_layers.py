"""Dependencies point down: core/ imports nothing of the project but itself, the data and model folders import only
core/, flag wording stays in helper/options.py, and teacher training loads no distillation code. The layout says who
a file is for: scripts/ holds only the user tools, the maintainer tools live in benchmarks/ (imported by nothing
else), and no distiller_zoo export hides one of its modules."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import ROOT

BOTTOM = "core"
LOWER_FOLDERS = ("dataset", "models", "distiller_zoo", "crd")
PROJECT = ("core", "helper", *LOWER_FOLDERS, "scripts", "benchmarks", "train_student", "train_teacher", "tests")
# what a researcher runs (named in README.md / docs/) and the teacher-fetch files it needs; maintainer tools go to
# benchmarks/ (docs/layout.md)
USER_TOOLS = ("demo.py", "export_cifar_format.py", "fetch_pretrained_teachers.sh", "summarize.py", "sweep.py",
              "fetch_teachers.py", "teachers.sha256", "verify_teacher.py")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement of ``path`` names (anywhere in the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def project_imports(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if name.split(".")[0] in PROJECT}


def module_path(name: str) -> Path:
    return ROOT / (name.replace(".", "/") + ".py")


def test_core_imports_only_itself() -> None:
    paths = sorted((ROOT / BOTTOM).rglob("*.py"))
    assert paths
    for path in paths:
        upward = {name for name in project_imports(path) if name.split(".")[0] != BOTTOM}
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"
    assert "bottom layer" in (ast.get_docstring(ast.parse((ROOT / BOTTOM / "__init__.py").read_text())) or "").lower()


@pytest.mark.parametrize("folder", LOWER_FOLDERS)
def test_lower_folders_import_only_core(folder: str) -> None:
    paths = sorted((ROOT / folder).rglob("*.py"))
    assert paths
    for path in paths:
        upward = {name for name in project_imports(path) if name.split(".")[0] not in (BOTTOM, folder, *LOWER_FOLDERS)}
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"


def test_data_folder_words_no_flag() -> None:
    """Flag wording lives where the flags are parsed: no '--flag' in the messages of dataset/ (docstrings may name
    the flag a parameter comes from)."""
    for path in sorted((ROOT / "dataset").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not re.search(r"--[a-z_]+", node.value), f"{path.relative_to(ROOT)}: {node.value!r}"


def test_teacher_training_loads_no_distillation_code() -> None:
    code = ("import sys, helper.teacher_trainer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('distiller_zoo', 'crd') "
            "or m in ('helper.methods', 'helper.student_trainer', 'helper.calibration')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_scripts_holds_only_the_user_tools() -> None:
    present = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.name != "__pycache__")
    assert present == sorted(USER_TOOLS), ("scripts/ is for the tools a researcher runs; move maintainer tools to "
                                           f"benchmarks/ (docs/layout.md): extra {sorted(set(present) - set(USER_TOOLS))}, "
                                           f"missing {sorted(set(USER_TOOLS) - set(present))}")
    docs = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    unnamed = [name for name in USER_TOOLS if f"scripts/{name}" not in docs]
    assert not unnamed, f"user tools no page names: {unnamed}"
    assert (ROOT / "benchmarks" / "bench.py").is_file()


def test_only_benchmarks_and_tests_import_benchmarks() -> None:
    paths = [p for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).parts[0] not in ("benchmarks", "tests", ".venv")]
    assert any(p.parent.name == "scripts" for p in paths)
    for path in paths:
        found = {name for name in project_imports(path) if name.split(".")[0] == "benchmarks"}
        assert not found, f"{path.relative_to(ROOT)} imports the maintainer tools {sorted(found)}"


def test_no_distiller_zoo_export_hides_a_module() -> None:
    """``distiller_zoo.X`` is the module X for every module: no export (class or function) carries a module's name,
    so ``import distiller_zoo.X as m`` gives the module."""
    zoo = importlib.import_module("distiller_zoo")
    modules = sorted(info.name for info in pkgutil.iter_modules(zoo.__path__))
    assert len(modules) >= 20 and len(zoo.__all__) >= 40
    clashes = sorted(set(zoo.__all__) & set(modules))
    assert not clashes, f"distiller_zoo exports {clashes}, the names of its modules; rename the modules (lower case)"
    for name in modules:
        module = importlib.import_module(f"distiller_zoo.{name}")
        assert getattr(zoo, name) is module, f"distiller_zoo.{name} is {getattr(zoo, name)!r}, not the module"
        assert isinstance(module, types.ModuleType)
    for name in zoo.__all__:
        assert not isinstance(getattr(zoo, name), types.ModuleType), name


def helper_import_graph() -> dict[str, set[str]]:
    """helper/'s modules and the helper modules each imports: every ``import`` and ``from ... import`` anywhere in the
    file (module level, under ``TYPE_CHECKING``, inside functions), ``from helper import x`` as ``helper.x``."""
    folder = ROOT / "helper"
    modules = {f"helper.{path.stem}" for path in folder.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(module_path(name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges.add(node.module)
                edges.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_helper_modules_import_no_circle() -> None:
    """No import circle among helper/'s modules, counting imports under TYPE_CHECKING and inside functions: the flags
    and defaults (options) sit below the configuration (config), which sits below a run's identity (run_folder)."""
    graph = helper_import_graph()
    assert "helper.options" in graph and "helper.config" in graph["helper.run_folder"]
    assert not graph["helper.options"] & {"helper.config", "helper.run_folder"}, graph["helper.options"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one when there is one
