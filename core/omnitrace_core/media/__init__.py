"""The media room: reading images, audio and video, and the models that read them natively.

Loading and checking media files with named errors (:mod:`.loading`), offline speech
recognition that turns a recording into timed transcript units for text models (:mod:`.asr`),
and the native omni / vision-language families (:mod:`.omni`: Qwen2-VL, Qwen2.5-VL,
Qwen2.5-Omni thinker), whose prompt builders lay media tokens out as units with seconds and
boxes.

Doors: this room may import the pipeline's source types and its small shared modules
(``sources``, ``errors``, ``log``, ``config``, ``prompting``, ``plugins``); the pipeline never
imports it. It reaches the tracer through :mod:`omnitrace_core.plugins`: :func:`register_plugins`
(the ``omnitrace_core.plugins`` entry point) adds a loader for omni / VL checkpoint folders
and the ``asr`` transcriber, each importing its heavy module only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnitrace_core.media.loading import (
    AUDIO_EXTRA,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    SAMPLE_RATE,
    MediaInput,
    VideoInfo,
    describe,
    load_audio,
    load_image,
    probe_video,
    require_tool,
)
from omnitrace_core.sources import MediaSource, TextSource

__all__ = [
    "AUDIO_EXTRA",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "SAMPLE_RATE",
    "MediaInput",
    "VideoInfo",
    "describe",
    "load_audio",
    "load_image",
    "probe_video",
    "register_plugins",
    "require_tool",
]


class OmniFolderLoader:
    """Loads a local Qwen2-VL / Qwen2.5-VL / Qwen2.5-Omni checkpoint folder with its builder."""

    name = "qwen-omni-vl"

    def claims(self, folder: Path) -> bool:
        from omnitrace_core.media.omni.loading import folder_spec

        return folder_spec(folder) is not None

    def load(self, folder: Path, **kwargs: Any) -> tuple[Any, Any, Any]:
        from omnitrace_core.media.omni.loading import load_folder

        ckpt = load_folder(folder, **kwargs)
        return ckpt.model, ckpt.tokenizer, ckpt.builder


def transcribe_source(source: MediaSource, *, model_path: str | None = None) -> TextSource:
    """Whisper ASR of an audio source into a timed transcript source (:mod:`.asr`)."""
    from omnitrace_core.media.asr import transcript_source  # faster-whisper: optional

    return transcript_source(source, model_path=model_path)


def register_plugins() -> None:
    """Register the omni / VL folder loader and the ``asr`` transcriber with the pipeline."""
    from omnitrace_core import plugins

    plugins.register_folder_loader(OmniFolderLoader())
    plugins.register_transcriber("asr", transcribe_source)
