"""Exceptions raised by the tracer.

Every error names the offending input so a user can fix it without reading our code.
All inherit from :class:`OmniTraceError`; input problems are also ``ValueError`` so that
callers who validate generically still catch them.
"""

from __future__ import annotations


class OmniTraceError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInputError(OmniTraceError, ValueError):
    """A source, question, response or config value is unusable (the message says which)."""


class ContextLengthError(InvalidInputError):
    """The prompt (plus the tokens to generate) does not fit the model's context window."""


class UnknownNameError(OmniTraceError, KeyError):
    """An unknown model or signal name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(OmniTraceError, RuntimeError):
    """Weights could not be found or loaded (missing package, bad checksum, unreadable folder)."""


class GenerationError(OmniTraceError, RuntimeError):
    """Decoding failed part-way (the cause is chained). ``partial_text`` holds the answer decoded
    so far, so nothing already generated is lost; observers receive this error."""

    partial_text: str = ""


class GenerationAbandoned(OmniTraceError):
    """Sent to observers (never raised to the caller) when a stream is closed before its end."""


class CaptureError(OmniTraceError, RuntimeError):
    """The model's attention cannot be captured (it does not route through AttentionInterface)."""


class UnsupportedModalityError(InvalidInputError):
    """The loaded model cannot take a source's modality (the message names model and modality)."""


class MediaError(InvalidInputError):
    """An image / audio / video file is missing, corrupt, empty or in an unsupported format."""


class MediaAccessError(InvalidInputError):
    """A local media path was refused: local files in messages are opt-in (``media_root`` or an
    allow-list), and a path that resolves outside them is refused without saying whether it exists."""


class MissingToolError(OmniTraceError, RuntimeError):
    """A system tool (ffmpeg, espeak-ng) is not installed; the message gives the install command."""


class MissingDependencyError(OmniTraceError, ImportError):
    """An optional Python package a feature needs is not installed; the message names the extra."""
