"""``omnitrace serve``: option checks before any model loads."""

from __future__ import annotations

from typer.testing import CliRunner

from omnitrace_core.cli import app


def test_serve_is_a_command():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in (
        "--max-body-bytes",
        "--max-sources",
        "--max-prompt-tokens",
        "--request-timeout",
        "--queue-size",
        "--api-key",
        "--ray",
        "--replicas",
        "--workers",
    ):
        assert flag in result.output


def test_serving_on_the_network_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("OMNITRACE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "needs an API key" in result.output


def test_auth_on_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("OMNITRACE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--auth", "on"])
    assert result.exit_code == 2 and "no API key" in result.output


def test_a_missing_extra_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name.startswith("omnitrace_integrations.serving"):
            raise ImportError("No module named 'fastapi'", name="fastapi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "omnitrace-integrations[serve]" in result.output and "fastapi" in result.output
