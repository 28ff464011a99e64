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
        "--max-batch-size",
        "--batch-wait-ms",
    ):
        assert flag in result.output


def test_serving_on_the_network_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("OMNITRACE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "needs an API key" in result.output


def test_a_zero_batch_size_is_refused_naming_the_option():
    result = CliRunner().invoke(app, ["serve", "--max-batch-size", "0"])
    assert result.exit_code == 2 and "max_batch_size" in result.output


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


def test_each_uvicorn_worker_builds_its_app_from_the_settings_in_the_environment(tiny_tracer, monkeypatch):
    """``--workers N``: the settings reach every worker process through OMNITRACE_SERVE_SETTINGS."""
    from omnitrace_integrations.serving import runner
    from omnitrace_integrations.serving.settings import ServeSettings

    loaded = []

    def fake_load(model, threads):
        loaded.append((model, threads))
        return tiny_tracer

    monkeypatch.setattr(runner, "load_tracer", fake_load)
    monkeypatch.setenv(runner.SETTINGS_ENV, ServeSettings(model="tiny", queue_size=3).model_dump_json())
    monkeypatch.setenv("OMNITRACE_SERVE_THREADS", "1")
    app = runner.app_from_env()
    assert loaded == [("tiny", 1)]
    assert app.state.settings.queue_size == 3 and app.state.tracer is tiny_tracer
