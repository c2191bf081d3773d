"""The layout as checked rules: import contracts, where SQL lives, no cycles, short code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_only_the_store_and_migrations_write_sql_text():
    offenders = []
    for path in python_files("app", "workers"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy" and any(
                    alias.name == "text" for alias in node.names):
                # the ORM's schema (server defaults) is DDL, like the migrations
                if "app/store/" not in path.as_posix() and path.name != "orm.py":
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_status_update_outside_the_store():
    sql = re.compile(r"UPDATE\s+(jobs|job_chunks)\b", re.I)
    orm = re.compile(r"\bupdate\((Job|JobChunk)\)")
    offenders = [str(p.relative_to(ROOT)) for p in python_files("app", "workers")
                 if "app/store/" not in p.as_posix()
                 and (sql.search(p.read_text()) or orm.search(p.read_text()))]
    assert offenders == []


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("app", "workers")
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert cycles == []


def test_worker_functions_are_short_and_modules_readable():
    long_functions, long_modules = [], []
    for path in python_files("app", "workers"):
        source = path.read_text()
        if source.count("\n") > 400:
            long_modules.append(str(path.relative_to(ROOT)))
        if "workers/" not in path.relative_to(ROOT).as_posix()[:8]:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 50:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length})")
    assert long_functions == []
    assert long_modules == []


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_storage_touches_fsspec():
    """Files are reached through `app.storage.Storage` alone (tests/slowdisk.py, a harness,
    registers an fsspec implementation on purpose and is not under app/ or workers/)."""
    offenders = [str(p.relative_to(ROOT)) for p in python_files("app", "workers")
                 if p.relative_to(ROOT).as_posix() != "app/storage.py"
                 and any(name == "fsspec" or name.startswith("fsspec.")
                         for name in imported_modules(ast.parse(p.read_text())))]
    assert offenders == []


def test_api_handlers_never_commit():
    """The request's unit of work commits once, after its handler returns
    (`app.api.context.commit_request`); handlers and services never commit."""
    offenders = [str(p.relative_to(ROOT)) for p in python_files("app/api", "app/services")
                 if p.name != "context.py" and ".commit()" in p.read_text()]
    assert offenders == []
