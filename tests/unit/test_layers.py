"""The package's import graph: one-way layers, no cycles, each library behind its own door.

Read from the source with ``ast`` (nothing is imported), so a new upward import, a cycle, an
import hidden inside a function or a stray ``import sqlalchemy`` fails here with the modules
named. The layers, top to bottom, are the README's architecture section.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sagas"

# Lowest first. A module may import modules of its own layer or of any layer below it.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "vocabulary",
        {
            "errors",
            "state",
            "retry",
            "routes",
            "payload",
            "settings",
            "observability",
            "faults",
            "clock",
            "filters",
            "tracing",
            "prometheus",
        },
    ),
    (
        "rules and definitions",
        {
            "machine",
            "registry",
            "definition",
            "choreography.definition",
            "choreography.tracker",
            "catalog",
            "messages",
            "context",
            "recovery",
        },
    ),
    (
        "store and transport",
        {
            "store",
            "store.engine",
            "store.records",
            "store.schema",
            "store.statements",
            "store.writes",
            "store.tx",
            "store.store",
            "store.migrate",
            "store.receipts",
            "store.joined",
            "store.search",
            "store.clears",
            "store.driver",
            "transport",
            "runtime",
            "admission",
        },
    ),
    (
        "engine",
        {
            "commands",
            "coordinator",
            "participant",
            "choreography.runner",
            "sweeper",
            "starter",
            "query",
            "doctor",
            "report",
            "versions",
            "signals",
            "heartbeats",
            "retention",
            "graph",
            "views",
            "operations",
        },
    ),
    (
        "edges",
        {
            "tasks",
            "install",
            "receipts",
            "choreography",
            "__init__",
            "testing.broker",
            "testing.embedded",
            "testing.runtime",
            "testing.assertions",
            "testing.doubles",
            "testing.invariants",
            "testing.explore",
            "testing.plugin",
            "testing",
            # The HTTP API (optional extra): FastAPI, Starlette and uvicorn stay in here.
            "web",
            "web.app",
            "web.api",
            "web.serve",
            "web.config",
            "web.security",
            "web.actions",
            "web.timeline",
            "web.pages",
            "web.wsgi",
        },
    ),
    # The example shop (user-level code shipped for ``saga demo``) and the CLI that runs it.
    (
        "examples",
        {
            "examples",
            "examples.models",
            "examples.inventory",
            "examples.payment",
            "examples.shipping",
            "examples.notification",
            "examples.order_fulfillment",
            "examples.order_choreography",
            "examples.loan_approval",
            "examples.trip_booking",
            "examples.demo",
            "cli",
        },
    ),
    # Framework integrations (sagas.contrib.*): edges a Django or Flask project calls. Above the
    # examples layer only because that is where ``cli`` lives, and the ``flask saga`` and
    # ``manage.py saga`` commands reuse it; nothing in the package imports them.
    (
        "integrations",
        {
            "contrib",
            "contrib.flask",
            "contrib.django",
            "contrib.django.conf",
            "contrib.django.start",
            "contrib.django.apps",
            "contrib.django.models",
            "contrib.django.admin",
            "contrib.django.cli",
            "contrib.django.management",
            "contrib.django.management.commands",
            "contrib.django.management.commands.saga",
        },
    ),
]
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}

# Third-party libraries that live behind one door each (the examples are user code: they use
# SQLAlchemy for their own databases and Celery for a plain task, as a user's services would).
DOORS = {
    # contrib.flask: the after-commit hook listens on the caller's SQLAlchemy session, and steps
    # get the Flask app context from Celery's task_prerun/task_postrun signals.
    "sqlalchemy": lambda m: m.startswith("store") or m == "contrib.flask",
    "alembic": lambda m: m.startswith("store"),
    # The hot path's statements run on psycopg's connection (store.driver); nowhere else.
    "psycopg": lambda m: m == "store.driver",
    "celery": lambda m: (
        m in {"tasks", "transport", "contrib.flask"} or m.split(".")[0] == "testing"
    ),
    "kombu": lambda m: m in {"transport"},
    "flask": lambda m: m == "contrib.flask",
    "flask_sqlalchemy": lambda m: m == "contrib.flask",
    "django": lambda m: m == "contrib.django" or m.startswith("contrib.django."),
    "fastapi": lambda m: m.split(".")[0] == "web",
    "starlette": lambda m: m.split(".")[0] == "web",
    "uvicorn": lambda m: m == "web.serve",
    # The OpenTelemetry API (never the SDK: that is the user's setup) and prometheus_client.
    "opentelemetry": lambda m: m == "tracing",
    "prometheus_client": lambda m: m == "prometheus",
    "rich": lambda m: m == "cli",  # the CLI's progress bar on bulk actions
    "a2wsgi": lambda m: m == "web.wsgi",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


@functools.cache
def _sources() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue  # Alembic scripts, loaded by Alembic, not imported by the package
        found[_module_name(path)] = path
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """Package-relative names a ``from ... import ...`` refers to (modules where they are)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if module != "__init__" else []
    if node.level:
        anchor = base if is_package else base[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
    elif node.module and (node.module == "sagas" or node.module.startswith("sagas.")):
        anchor = []
        node_module = node.module.removeprefix("sagas").lstrip(".")
        return _targets(anchor + (node_module.split(".") if node_module else []), node)
    else:
        return []
    return _targets(anchor + (node.module.split(".") if node.module else []), node)


def _targets(prefix: list[str], node: ast.ImportFrom) -> list[str]:
    known = _sources()
    name = ".".join(prefix) or "__init__"
    out = []
    for alias in node.names:
        sub = ".".join([*prefix, alias.name])
        out.append(sub if sub in known else name)
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
    """(module -> package modules it imports, module -> third-party roots, nested imports)."""
    edges: dict[str, set[str]] = {}
    libraries: dict[str, set[str]] = {}
    nested: list[str] = []
    for module, path in _sources().items():
        tree = ast.parse(path.read_text(), str(path))
        edges[module], libraries[module] = set(), set()
        top_level = set(map(id, tree.body))
        # An optional dependency imported at module level (``try: import x`` / ``except
        # ImportError``) is not a late import.
        for node in tree.body:
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                top_level.update(
                    id(n) for n in node.body if isinstance(n, ast.Import | ast.ImportFrom)
                )
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if id(node) not in top_level:
                nested.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(module, path, node)
                edges[module].update(t for t in targets if t != module)
                if not targets and node.module and not node.level:
                    libraries[module].add(node.module.split(".")[0])
            else:
                for alias in node.names:
                    root = alias.name.split(".")[0]
                    if root != "sagas":
                        libraries[module].add(root)
    return edges, libraries, nested


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    edges, libraries, _ = _graph()
    assert {"coordinator", "store.store", "choreography.runner", "tasks"} <= edges.keys()
    assert "machine" in edges["coordinator"] and "store" in edges["coordinator"]
    assert "sqlalchemy" in libraries["store.engine"]


def test_no_import_cycles() -> None:
    edges, _, _ = _graph()
    assert _cycles(edges) == []


def test_a_cycle_would_be_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer() -> None:
    assert sorted(set(_sources()) - LAYER_OF.keys()) == []


def test_imports_point_down_the_layers() -> None:
    edges, _, _ = _graph()
    upward = [
        f"{src} ({LAYERS[LAYER_OF[src]][0]}) imports {dst} ({LAYERS[LAYER_OF[dst]][0]})"
        for src, targets in sorted(edges.items())
        for dst in sorted(targets)
        if LAYER_OF[dst] > LAYER_OF[src]
    ]
    assert upward == []


def test_no_imports_inside_functions() -> None:
    _, _, nested = _graph()
    assert nested == [], "move the shared piece down a layer instead of importing late"


@pytest.mark.parametrize("library", sorted(DOORS))
def test_each_library_stays_behind_its_door(library: str) -> None:
    _, libraries, _ = _graph()
    outside = sorted(
        m
        for m, libs in libraries.items()
        if library in libs and not DOORS[library](m) and not m.startswith("examples")
    )
    assert outside == [], f"{library} imported outside its door"
