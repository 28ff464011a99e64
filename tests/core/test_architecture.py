"""The core's house: three rooms (tracing pipeline, media, evaluation), one-way doors, no circles.

Walks every ``import`` in ``core/omnitrace_core`` (function-level imports included: a lazy
import is still a door) and checks the directions the package docstrings promise.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core" / "omnitrace_core"
ROOT = CORE.parents[1]

#: What the media room may use of the pipeline: its source types and small shared modules.
MEDIA_MAY_USE = {"sources", "errors", "log", "config", "prompting", "plugins"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in CORE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from pkg import sub`` resolved to the submodule)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def room(name: str) -> str:
    parts = name.split(".")
    if name == "omnitrace_core":
        return "facade"
    if parts[1] in {"media", "evaluation", "cli"}:
        return parts[1]
    return "pipeline"


def test_the_folder_shows_the_rooms():
    listing = {p.name for p in CORE.iterdir() if not p.name.startswith("__")}
    assert {"media", "evaluation", "cli"} <= listing
    for moved in ("metrics.py", "baselines.py", "asr.py", "omni", "report", "evaluation_methods.py"):
        assert moved not in listing
    for pkg in ("media", "evaluation"):
        doc = ast.get_docstring(ast.parse((CORE / pkg / "__init__.py").read_text())) or ""
        assert "may import" in doc, f"{pkg}/__init__.py must say what the room may import"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if room(n) == "pipeline"))
def test_the_pipeline_imports_neither_media_nor_evaluation(name):
    wrong = {t for t in GRAPH[name] if room(t) != "pipeline"}
    assert not wrong, f"{name} (tracing pipeline) imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if room(n) == "media"))
def test_media_uses_only_the_pipelines_source_types(name):
    for target in GRAPH[name]:
        where = room(target)
        assert where in {"media", "pipeline"}, f"{name} (media) imports {target} ({where})"
        if where == "pipeline":
            assert target.split(".")[1] in MEDIA_MAY_USE, f"{name} (media) imports {target}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if room(n) == "evaluation"))
def test_evaluation_never_imports_the_command_line(name):
    assert not {t for t in GRAPH[name] if room(t) in {"cli", "facade"}}, name


def test_only_the_command_line_imports_the_command_line():
    for name, targets in GRAPH.items():
        if room(name) != "cli":
            assert not {t for t in targets if room(t) == "cli"}, name


def test_the_facade_exports_the_pipeline_only():
    assert {room(t) for t in GRAPH["omnitrace_core"]} <= {"pipeline"}


def test_no_import_circles():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_core_is_framework_free_in_every_room():
    banned = ("langchain", "llama_index", "opentelemetry")
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.startswith(banned) for n in names), f"{path} imports a framework"


def test_nothing_in_core_reads_benchmark_results():
    """Generated outputs live in benchmarks/results; code never names them (docstrings may)."""
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                assert "benchmarks/results" not in node.value and "benchmarks" not in node.value.split("/")[:1], path


# ------------------------------------------------------------------ public API


def test_every_name_in_all_imports():
    import omnitrace_core

    for name in omnitrace_core.__all__:
        assert getattr(omnitrace_core, name) is not None


_DOC_FILES = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*.py")]
_DOC_IMPORT = re.compile(r"from (omnitrace_core(?:\.\w+)*) import \(?([\w ,\n]+?)\)?(?:\n\n|$|\n[^ \n])", re.M)


def _documented_imports() -> list[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in _DOC_FILES:
        for module, names in _DOC_IMPORT.findall(path.read_text()):
            for raw in names.replace("\n", ",").split(","):
                name = raw.strip().split(" as ")[0].strip()
                if name.isidentifier():
                    found.add((module, name))
    return sorted(found)


DOCUMENTED = _documented_imports()


def test_the_docs_document_imports():
    assert len(DOCUMENTED) > 10


def _documented_paths() -> list[str]:
    found: set[str] = set()
    for path in _DOC_FILES:
        found.update(re.findall(r"\bomnitrace_core(?:\.[A-Za-z_]\w*)+", path.read_text()))
    return sorted(found)


@pytest.mark.parametrize("dotted", _documented_paths())
def test_each_documented_dotted_path_resolves(dotted):
    """``omnitrace_core.metrics.score`` in prose: the longest module prefix imports, the rest are attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{dotted} does not import")


@pytest.mark.parametrize(("module", "name"), DOCUMENTED)
def test_each_documented_name_imports(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name) or importlib.import_module(f"{module}.{name}")


OLD_PATHS = {
    "omnitrace_core.metrics": "omnitrace_core.evaluation.metrics",
    "omnitrace_core.baselines": "omnitrace_core.evaluation.baselines",
    "omnitrace_core.faithfulness": "omnitrace_core.evaluation.faithfulness",
    "omnitrace_core.selfcite": "omnitrace_core.evaluation.selfcite",
    "omnitrace_core.contextcite_peer": "omnitrace_core.evaluation.contextcite_peer",
    "omnitrace_core.engines": "omnitrace_core.evaluation.engines",
    "omnitrace_core.bench": "omnitrace_core.evaluation.bench",
    "omnitrace_core.evaluation_methods": "omnitrace_core.evaluation.methods",
    "omnitrace_core.report.tables": "omnitrace_core.evaluation.report.tables",
    "omnitrace_core.asr": "omnitrace_core.media.asr",
    "omnitrace_core.omni.loading": "omnitrace_core.media.omni.loading",
}


@pytest.mark.parametrize(("old", "new"), sorted(OLD_PATHS.items()))
def test_old_module_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new  # the alias did not rename it


def test_old_evaluation_and_media_names_still_resolve():
    from omnitrace_core.evaluation import EvalInputError, EvalSettings, evaluate
    from omnitrace_core.evaluation.runner import evaluate as runner_evaluate
    from omnitrace_core.media import load_audio
    from omnitrace_core.media.loading import load_audio as loading_load_audio

    assert evaluate is runner_evaluate and load_audio is loading_load_audio
    assert EvalSettings and EvalInputError


def test_media_reaches_the_pipeline_through_plugins():
    from omnitrace_core import plugins

    assert "qwen-omni-vl" in [f.name for f in plugins.folder_loaders()]
    assert plugins.transcriber("asr") is not None


# ------------------------------------------------------------------ the server is an adapter

#: Web / serving frameworks the core never imports (the server lives in omnitrace_integrations.serving).
SERVING_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "sse_starlette", "prometheus_client", "httpx", "ray.serve")


def _imported_names(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    out: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, node))
    return out


def test_core_never_imports_a_web_framework():
    for path in CORE.rglob("*.py"):
        for name, _ in _imported_names(ast.parse(path.read_text())):
            assert not any(name == f or name.startswith(f + ".") for f in SERVING_FRAMEWORKS), (
                f"{path} imports {name}: serving code belongs in omnitrace_integrations.serving"
            )


def test_only_the_serve_command_reaches_the_adapters_and_only_lazily():
    """``omnitrace serve`` is the core's one door to ``omnitrace_integrations``: inside its function."""
    reached: dict[str, list[str]] = {}
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        lazy = {
            id(inner)
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(fn)
        }
        for name, node in _imported_names(tree):
            if name.split(".")[0] == "omnitrace_integrations":
                assert id(node) in lazy, f"{path} imports {name} at module level"
                reached.setdefault(_module_name(path), []).append(name)
    assert set(reached) == {"omnitrace_core.cli.serving"}, reached
    assert all(n.startswith("omnitrace_integrations.serving") for n in reached["omnitrace_core.cli.serving"])
