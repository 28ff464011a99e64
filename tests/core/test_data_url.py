"""The one reading of inline media (base64, data: URLs) that the adapters and the server share."""

from __future__ import annotations

import base64

import pytest

from omnitrace_core import InvalidInputError
from omnitrace_core.media.data_url import decode_base64, decode_data_url

PNG = b"\x89PNG\r\n\x1a\nnot-really"
B64 = base64.b64encode(PNG).decode()


def test_base64_with_line_breaks_and_bytes_decodes():
    wrapped = "\n".join(B64[i : i + 8] for i in range(0, len(B64), 8))
    assert decode_base64(wrapped, "x") == PNG
    assert decode_base64(B64.encode(), "x") == PNG


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("  ", "block 'a': the base64 data is empty"),
        ("@@@@", "block 'a': the base64 data is not valid base64"),
        (12, "block 'a': base64 data must be a string, got int"),
    ],
)
def test_bad_base64_is_named(data, match):
    with pytest.raises(InvalidInputError, match=match):
        decode_base64(data, "block 'a'")


def test_data_urls_give_bytes_and_mime():
    assert decode_data_url(f"data:image/png;base64,{B64}", "x") == (PNG, "image/png")
    assert decode_data_url("data:text/plain;charset=utf-8,caf%C3%A9", "x") == (
        "café".encode(),
        "text/plain",
    )
    assert decode_data_url(f"data:;base64,{B64}", "x") == (PNG, None)


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("https://example.com/a.png", {}, "doc: expected a data: URL"),
        ("data:image/png;base64", {}, "doc: malformed data: URL"),
        ("data:image/png;base64,%%%", {}, "doc: the base64 data is not valid base64"),
        ("data:image/png,", {}, "doc: the data: URL holds no data"),
        ("data:image/png;base64,", {}, "doc: the base64 data is empty"),
        ("data:text/plain,hello", {"base64_only": True}, "doc: only base64 data: URLs are accepted"),
    ],
)
def test_bad_data_urls_are_named(url, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        decode_data_url(url, "doc", **kwargs)


def test_an_empty_payload_is_left_to_the_caller_when_asked():
    assert decode_data_url("data:image/png;base64,", "doc", base64_only=True, allow_empty=True) == (
        b"",
        "image/png",
    )
