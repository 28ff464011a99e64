"""The same server on Ray Serve: N replicas, one model each, behind one address.

``omnitrace serve --ray --replicas N`` (or :func:`run_on_ray` / :func:`build_app` with your own
``serve.run``) deploys :func:`~omnitrace_integrations.serving.app.create_app` as a Ray Serve
ingress deployment. Each replica loads its own model in its constructor and keeps the app's own
limits (one generation at a time, bounded queue -> 429, auth, body limits); Ray's proxy spreads
requests over the replicas. Needs ``ray[serve]`` (``serve-ray`` extra).

``RAY_AUTH_MODE`` is handled as in ``docs/ray.md``: a local instance started here defaults it to
``disabled``; a value you exported is kept.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from omnitrace_integrations.serving.runner import load_tracer
from omnitrace_integrations.serving.settings import ServeSettings

RAY_SERVE_EXTRA = 'pip install "omnitrace-integrations[serve-ray]"  (ray[serve])'
APP_NAME = "omnitrace"


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError(
            f"omnitrace serve --ray needs Ray Serve ({exc.name} is missing): {RAY_SERVE_EXTRA}"
        ) from exc
    return serve


class OmniTraceReplica:
    """One Ray Serve replica: loads the model once, then serves ``create_app`` over it."""

    def __init__(self, settings_json: str, make_tracer: Callable[[], Any]) -> None:
        self.settings = ServeSettings.model_validate_json(settings_json)
        self.tracer = make_tracer()

    def __serve_build_asgi_app__(self) -> Any:
        from omnitrace_integrations.serving.app import create_app

        return create_app(self.tracer, self.settings)


def build_app(
    settings: ServeSettings,
    *,
    replicas: int = 2,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int | None = None,
    make_tracer: Callable[[], Any] | None = None,
) -> Any:
    """The Ray Serve application (``serve.run(build_app(settings))``).

    Args:
        settings: The app's settings (limits, auth) for every replica.
        replicas: Replicas, one model each.
        num_cpus / num_gpus: Resources of each replica (``num_gpus=1``: one GPU per replica;
            load the model on it with ``make_tracer``, e.g. ``Tracer.from_pretrained(name,
            device="cuda")``).
        threads: torch threads per replica (default: Ray's ``OMP_NUM_THREADS``).
        make_tracer: Builds the replica's tracer (pickled to the replicas); default: load
            ``settings.model``.
    """
    serve = _serve()
    factory = make_tracer or functools.partial(load_tracer, settings.model, threads)
    ingress = serve.ingress()(OmniTraceReplica)
    deployment = serve.deployment(
        ingress,
        name="OmniTrace",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Hand each replica its whole queue (+ the running request + one to refuse): the app's
        # own bounded queue answers 429, instead of an unbounded wait in Ray's router.
        max_ongoing_requests=settings.queue_size + 2,
    )
    return deployment.bind(settings.model_dump_json(), factory)


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` or start a private local instance (reused if already initialised)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc


def deploy(
    settings: ServeSettings,
    *,
    replicas: int = 2,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int | None = None,
    make_tracer: Callable[[], Any] | None = None,
    blocking: bool = False,
) -> str:
    """Start Ray (or join ``address``), start Serve's HTTP proxy on ``settings.host:port`` and
    deploy ``replicas`` replicas; returns the base URL. ``blocking`` waits until Ctrl-C."""
    serve = _serve()
    settings.check_startup()
    start_ray(address, None if address else max(1, int(replicas * num_cpus + 0.999)))
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_app(
        settings,
        replicas=replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        threads=threads,
        make_tracer=make_tracer,
    )
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{settings.host}:{settings.port}"


def run_on_ray(
    settings: ServeSettings,
    *,
    replicas: int = 2,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int | None = None,
) -> None:
    """``omnitrace serve --ray``: deploy and serve until interrupted."""
    deploy(
        settings,
        replicas=replicas,
        address=address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        threads=threads,
        blocking=True,
    )
