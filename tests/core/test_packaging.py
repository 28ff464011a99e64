"""Packaging: no top-level `core` package leaks; the core never imports a framework."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core" / "omnitrace_core"


def test_import_core_fails_outside_the_repo(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import core"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'core'" in proc.stderr


def test_no_package_named_omnitrace():
    assert importlib.util.find_spec("omnitrace_core") is not None
    spec = importlib.util.find_spec("omnitrace")
    assert spec is None or "omnitrace_core" not in str(spec.origin)


def test_core_is_framework_free():
    banned = ("langchain", "llama_index", "opentelemetry")
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
