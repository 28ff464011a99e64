"""Where optional rooms plug into the pipeline: model-folder loaders and audio transcribers.

The tracing pipeline never imports the media room. Media (and any third-party package)
reaches it here instead: a *folder loader* claims a local checkpoint folder the plain causal-LM
path cannot load (an omni / vision-language model with its processor) and returns the model,
its tokenizer and its prompt builder; a *transcriber* turns an audio source into a timed
transcript a text model can read (``TracerConfig(audio_fallback="asr")``).

Providers register through the ``omnitrace_core.plugins`` entry-point group: each entry point
names a function without arguments that calls :func:`register_folder_loader` /
:func:`register_transcriber`. The package's own media room is one such provider
(``pyproject.toml``). Entry points are read once, on the first lookup; a provider that fails
to load is logged and skipped, so a broken plug-in never stops text models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from omnitrace_core.log import get_logger
from omnitrace_core.sources import MediaSource, TextSource

ENTRY_POINT_GROUP = "omnitrace_core.plugins"

logger = get_logger(__name__)


class FolderLoader(Protocol):
    """Loads local checkpoint folders of one model family."""

    name: str

    def claims(self, folder: Path) -> bool:
        """Whether this folder is one of this family's checkpoints."""
        ...

    def load(self, folder: Path, **kwargs: Any) -> tuple[Any, Any, Any]:
        """``(model, tokenizer, prompt_builder)``; keyword arguments go to ``from_pretrained``."""
        ...


#: ``(audio source, model_path=...) -> transcript source`` with timed segments.
Transcriber = Callable[..., TextSource]

_LOCK = threading.Lock()
_LOADED = False
_FOLDER_LOADERS: list[FolderLoader] = []
_TRANSCRIBERS: dict[str, Transcriber] = {}


def register_folder_loader(loader: FolderLoader) -> None:
    """Add a folder loader (a loader with the same ``name`` is replaced)."""
    _FOLDER_LOADERS[:] = [x for x in _FOLDER_LOADERS if x.name != loader.name]
    _FOLDER_LOADERS.append(loader)


def register_transcriber(name: str, transcriber: Transcriber) -> None:
    """Add (or replace) the transcriber used for ``audio_fallback=name``."""
    _TRANSCRIBERS[name] = transcriber


def _load_entry_points() -> None:
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()()
            except Exception as exc:  # a broken plug-in must not stop text models
                logger.warning("plugin_failed", plugin=ep.name, value=ep.value, error=repr(exc))
        _LOADED = True


def folder_loaders() -> list[FolderLoader]:
    """Every registered folder loader, entry points included."""
    _load_entry_points()
    return list(_FOLDER_LOADERS)


def transcriber(name: str) -> Transcriber | None:
    """The transcriber registered as ``name`` (``None``: none is installed)."""
    _load_entry_points()
    return _TRANSCRIBERS.get(name)


def transcribe(source: MediaSource, name: str, model_path: str | None) -> TextSource:
    """Transcribe ``source`` with the ``name`` transcriber.

    Raises:
        LookupError: no transcriber of that name is registered (names the entry-point group).
    """
    fn = transcriber(name)
    if fn is None:
        raise LookupError(
            f"no {name!r} transcriber is registered (entry-point group {ENTRY_POINT_GROUP!r}); "
            "install omnitrace-integrations with its audio extra: pip install 'omnitrace-integrations[audio]'"
        )
    return fn(source, model_path=model_path)
