"""The end of a remote answer without sources, as :class:`~.client.RemoteTracer` reads it.

The server itself answers a conversation without sources through ``Tracer.chat`` (the core's
one chat path, which keeps typed control tokens as text); this record is what the client
builds from the streamed chunks and usage, for the adapters' remote plain answers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlainFinal:
    """The end of an answer without sources: its text, usage, finish reason and model."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    model: str
