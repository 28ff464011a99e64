"""``omnitrace serve``: the OpenAI-compatible HTTP server with citations.

The server is an adapter (FastAPI, uvicorn, Ray Serve): it lives in
``omnitrace_integrations.serving``. This command only parses options and imports it lazily,
inside the command, so the core stays framework-free; without the ``serve`` extra it stops with
an error naming the extra. (The one import of ``omnitrace_integrations`` in the core, checked by
``tests/core/test_architecture.py``.)
"""

from __future__ import annotations

from typing import Annotated

import typer

from omnitrace_core.models import DEFAULT_MODEL

app = typer.Typer()

SERVE_EXTRA = 'pip install "omnitrace-integrations[serve]"'


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Packaged model name or local folder")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Bind address; non-loopback needs --api-key")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes, one model each")] = 1,
    api_key: Annotated[
        str | None, typer.Option(envvar="OMNITRACE_API_KEY", help="Bearer token clients must send")
    ] = None,
    auth: Annotated[str, typer.Option(help="auto | on | off (off: only behind your own gateway)")] = "auto",
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413)")] = 8 * 1024 * 1024,
    max_sources: Annotated[int, typer.Option(help="Most sources per request")] = 32,
    max_prompt_tokens: Annotated[int, typer.Option(help="Most tokens of sources + question")] = 4096,
    max_tokens: Annotated[
        int, typer.Option(help="Largest max_tokens a request may ask (and the default)")
    ] = 512,
    request_timeout: Annotated[float, typer.Option(help="Seconds from arrival to last token")] = 120.0,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait; one more gets 429")] = 16,
    retry_after: Annotated[int, typer.Option(help="Retry-After seconds sent with a 429")] = 2,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds between two body pieces (slow clients)")
    ] = 10.0,
    max_batch_size: Annotated[
        int, typer.Option(help="Most queued requests decoded together (1: one at a time)")
    ] = 8,
    batch_wait_ms: Annotated[
        float, typer.Option(help="Milliseconds an idle server waits for requests to batch with")
    ] = 5.0,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy on Ray Serve (needs ray[serve])")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Ray Serve replicas, one model each")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a local instance)")
    ] = None,
    replica_cpus: Annotated[float, typer.Option(help="CPUs per Ray replica")] = 1.0,
    replica_gpus: Annotated[float, typer.Option(help="GPUs per Ray replica (0: CPU)")] = 0.0,
) -> None:
    """Serve a model over HTTP: OpenAI chat completions with per-sentence citations (docs/serving.md)."""
    try:
        from omnitrace_integrations.serving import runner
        from omnitrace_integrations.serving.settings import ServeSettings
    except ImportError as exc:
        typer.echo(f"omnitrace serve needs the serve extra ({exc.name} is missing): {SERVE_EXTRA}", err=True)
        raise typer.Exit(2) from exc
    try:
        settings = ServeSettings(
            model=model,
            host=host,
            port=port,
            api_key=api_key,
            auth=auth,
            max_body_bytes=max_body_bytes,
            max_sources=max_sources,
            max_prompt_tokens=max_prompt_tokens,
            max_tokens=max_tokens,
            request_timeout_s=request_timeout,
            queue_size=queue_size,
            retry_after_s=retry_after,
            body_timeout_s=body_timeout,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
        )
        settings.check_startup()
    except ValueError as exc:  # a ValidationError is a ValueError: it names the option
        typer.echo(f"omnitrace serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    if ray:
        from omnitrace_integrations.serving.ray_app import run_on_ray

        run_on_ray(
            settings,
            replicas=replicas,
            address=ray_address,
            num_cpus=replica_cpus,
            num_gpus=replica_gpus,
            threads=threads,
        )
        return
    runner.serve(settings, workers=workers, threads=threads)
