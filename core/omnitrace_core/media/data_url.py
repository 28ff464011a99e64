"""Inline media: strict base64 and ``data:`` URLs to bytes, with errors that name the input.

One reading for every door media comes in by: LangChain content blocks, LlamaIndex blocks
and nodes, and the HTTP server's ``documents`` and message parts. Pure standard library (no
framework), so the adapters and the server share it without the core importing either.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from omnitrace_core.errors import InvalidInputError


def decode_base64(data: Any, what: str) -> bytes:
    """Strict base64 (white space and line breaks allowed) to bytes.

    Args:
        data: The base64 text (``bytes`` are read as ASCII).
        what: Names the input in error messages (``"image content block 'x'"``).

    Raises:
        InvalidInputError: if ``data`` is not text, is empty, or is not valid base64.
    """
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii", errors="replace")
    if not isinstance(data, str):
        raise InvalidInputError(f"{what}: base64 data must be a string, got {type(data).__name__}")
    compact = "".join(data.split())
    if not compact:
        raise InvalidInputError(f"{what}: the base64 data is empty")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{what}: the base64 data is not valid base64 ({exc})") from exc


def decode_data_url(
    url: str, what: str, *, base64_only: bool = False, allow_empty: bool = False
) -> tuple[bytes, str | None]:
    """The bytes and MIME type of a ``data:[<mime>][;<param>...][;base64],<payload>`` URL.

    Args:
        url: The URL.
        what: Names the input in error messages.
        base64_only: Refuse a percent-encoded payload (OpenAI's API takes base64 only, so the
            server does too).
        allow_empty: Return ``b""`` for an empty payload, for a caller whose own check of the
            source names that problem (the server's ``invalid_input``).

    Raises:
        InvalidInputError: if ``url`` is not a data: URL, has no ``,`` before the data, is not
            base64 when ``base64_only``, holds invalid base64, or holds no data.
    """
    if not url.startswith("data:"):
        raise InvalidInputError(f"{what}: expected a data: URL (data:<mime>;base64,...)")
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise InvalidInputError(f"{what}: malformed data: URL (no ',' before the data)")
    params = header.split(";")
    mime = params[0].strip() or None
    is_base64 = "base64" in (p.strip() for p in params[1:])
    if base64_only and not is_base64:
        raise InvalidInputError(f"{what}: only base64 data: URLs are accepted (data:<mime>;base64,...)")
    if allow_empty and not payload.strip():
        return b"", mime
    data = decode_base64(unquote(payload), what) if is_base64 else unquote_to_bytes(payload)
    if not data:
        raise InvalidInputError(f"{what}: the data: URL holds no data")
    return data, mime
