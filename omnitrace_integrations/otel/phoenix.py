"""Run Arize Phoenix locally (offline) and read spans back from its REST API.

Used by ``examples/otel_phoenix.py`` and the Phoenix integration test; handy in notebooks too::

    with local_phoenix(port=6006) as url:
        provider = otlp_tracer_provider(url, project="omnitrace")
        ...
        spans = fetch_spans(url, "omnitrace")

Needs ``pip install arize-phoenix opentelemetry-exporter-otlp-proto-http`` (the ``phoenix``
extra). Phoenix's own telemetry is switched off and it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PHOENIX_INSTALL_HINT = 'pip install "omnitrace-integrations[phoenix]"'
PROJECT_ATTRIBUTE = "openinference.project.name"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_phoenix(
    port: int = 6006,
    *,
    working_dir: str | os.PathLike[str] | None = None,
    startup_timeout_s: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Start ``phoenix serve`` in a subprocess and yield its base URL; stop it on exit.

    Args:
        port: HTTP port (UI, REST API and OTLP/HTTP at ``/v1/traces``).
        working_dir: Where Phoenix keeps its SQLite database (default: a temporary folder).
        startup_timeout_s: How long to wait for ``/healthz``.
        log_path: Where the server's output goes (default: discarded).

    Raises:
        ImportError: if ``arize-phoenix`` is not installed.
        RuntimeError: if the port is taken or the server does not come up in time.
    """
    try:
        import phoenix  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"local_phoenix needs Arize Phoenix: {PHOENIX_INSTALL_HINT}", name=exc.name
        ) from exc
    url = f"http://127.0.0.1:{port}"
    if _healthy(url):
        raise RuntimeError(f"something already answers on {url}; stop it or pick another port")
    with contextlib.ExitStack() as stack:
        workdir = working_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="omnitrace-phoenix-"))
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_PORT": str(port),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_GRPC_PORT": str(_free_port()),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        out = stack.enter_context(Path(log_path).open("wb")) if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "phoenix.server.main", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _healthy(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"Phoenix exited with code {proc.returncode} before serving {url}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Phoenix did not answer on {url} within {startup_timeout_s:.0f} s")
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def otlp_tracer_provider(url: str, project: str, service_name: str = "omnitrace") -> Any:
    """A TracerProvider exporting to Phoenix at ``url`` over OTLP/HTTP (batched, failures logged).

    Args:
        url: Phoenix base URL (spans go to ``{url}/v1/traces``).
        project: Phoenix project name (resource attribute ``openinference.project.name``).
        service_name: ``service.name`` resource attribute.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(f"OTLP/HTTP export needs: {PHOENIX_INSTALL_HINT}", name=exc.name) from exc
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from omnitrace_integrations.otel.exporters import LoggedSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, PROJECT_ATTRIBUTE: project})
    )
    exporter = LoggedSpanExporter(OTLPSpanExporter(endpoint=f"{url}/v1/traces"))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    return provider


def fetch_spans(
    url: str, project: str, *, limit: int = 1000, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Every span of ``project`` as Phoenix's REST API returns it (``GET /v1/projects/{p}/spans``)."""
    spans: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(min(limit, 1000))} | ({"cursor": cursor} if cursor else {})
        address = f"{url}/v1/projects/{urllib.parse.quote(project)}/spans?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(address, timeout=timeout_s) as resp:
                page = json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # the project appears with its first span
                return []
            raise
        spans.extend(page.get("data", []))
        cursor = page.get("next_cursor")
        if not cursor or len(spans) >= limit:
            return spans


def wait_for_spans(
    url: str, project: str, count: int, *, timeout_s: float = 30.0, poll_s: float = 0.25
) -> list[dict[str, Any]]:
    """Poll :func:`fetch_spans` until at least ``count`` spans arrived (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    spans = fetch_spans(url, project)
    while len(spans) < count and time.monotonic() < deadline:
        time.sleep(poll_s)
        spans = fetch_spans(url, project)
    return spans
