"""``OmniTraceInstrumentor``: trace every OmniTrace generation, OpenInference style.

    OmniTraceInstrumentor().instrument(tracer_provider=provider)
    ...  # every Tracer, created before or after, now emits spans
    OmniTraceInstrumentor().uninstrument()

How it hooks (no core change): ``Tracer.generate``, ``Tracer.stream``, ``Tracer.chat`` (calls
without sources) and ``Tracer.attribute`` are wrapped (``wrapt``, as OpenInference
instrumentations do); the wrapper attaches one shared :class:`OTelObserver` to the tracer
instance before delegating (``add_observer`` is idempotent) and remembers the instance in a
weak set. ``uninstrument`` unwraps the methods,
detaches the observer from every remembered tracer and ends any span still open.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from omnitrace_core.tracer import Tracer
from omnitrace_integrations.otel.observer import OTelObserver

_METHODS = ("generate", "stream", "chat", "attribute")


class OmniTraceInstrumentor(BaseInstrumentor):
    """Instruments :class:`omnitrace_core.Tracer` so every generation emits spans.

    ``instrument`` keyword arguments: ``tracer_provider`` (default: the global one),
    ``capture_content`` (default: from the environment, off), ``max_content_chars``.
    """

    _observer: OTelObserver | None = None
    _tracers: weakref.WeakSet[Tracer]

    def instrumentation_dependencies(self) -> Collection[str]:
        # omnitrace_core ships inside this distribution; nothing else to check.
        return ()

    @property
    def observer(self) -> OTelObserver | None:
        """The observer attached to instrumented tracers (``None`` when not instrumented)."""
        return self._observer

    def _instrument(self, **kwargs: Any) -> None:
        kwargs.pop("skip_dep_check", None)
        self._observer = OTelObserver(
            tracer_provider=kwargs.get("tracer_provider"),
            capture_content=kwargs.get("capture_content"),
            max_content_chars=kwargs.get("max_content_chars", 4000),
        )
        self._tracers = weakref.WeakSet()
        for name in _METHODS:
            wrap_function_wrapper("omnitrace_core.tracer", f"Tracer.{name}", self._attach)

    def _uninstrument(self, **kwargs: Any) -> None:
        for name in _METHODS:
            unwrap(Tracer, name)
        observer, self._observer = self._observer, None
        if observer is None:
            return
        for tracer in list(self._tracers):
            tracer.flush_observers(timeout=kwargs.get("flush_timeout", 5.0))
            tracer.remove_observer(observer)
        self._tracers = weakref.WeakSet()
        observer.shutdown()

    def _attach(self, wrapped: Callable[..., Any], instance: Tracer, args: Any, kwargs: Any) -> Any:
        observer = self._observer
        if observer is not None and instance not in self._tracers:
            instance.add_observer(observer)
            self._tracers.add(instance)
        return wrapped(*args, **kwargs)
