"""Image / audio / video content blocks become media sources; bad ones are named; citations locate.

Every block form LangChain users send (v1 standard, v0 ``source_type``, OpenAI ``image_url`` /
``input_audio``) is read by :func:`read_messages` without any model; a recording fake tracer
checks what ``ChatOmniTrace`` hands the core; the tiny random Llama checks that a text model
refuses an image by modality (the core's ``UnsupportedModalityError``, unchanged) and reads
audio through the ``asr`` fallback (the speech recogniser itself is faked).
"""

from __future__ import annotations

import base64
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.messages.content import create_image_block

from omnitrace_core import FinalEvent, TextSource, TracedAnswer, TracerConfig
from omnitrace_core.errors import MediaAccessError, MediaError, UnsupportedModalityError
from omnitrace_core.media.paths import NO_LOCAL_FILES, LocalMediaPolicy
from omnitrace_core.sources import MediaSource, TimedSegment
from omnitrace_integrations.langchain import ChatOmniTrace
from omnitrace_integrations.langchain.citations import citation_annotation, cited_documents
from omnitrace_integrations.langchain.messages import UnsupportedContentError, read_messages
from tests.factories import make_answer, make_citation, make_sentence, make_source_info

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read(*blocks: Any, root: Path | None = None) -> list[Any]:
    """The sources read from one human message holding a question and ``blocks`` (local files
    allowed from ``root`` when given)."""
    policy = LocalMediaPolicy.create(media_root=root) if root is not None else NO_LOCAL_FILES
    message = HumanMessage(content=[{"type": "text", "text": "What is shown?"}, *blocks])
    return read_messages([message], media_policy=policy).sources


def _one(block: dict[str, Any], root: Path | None = None) -> MediaSource:
    (src,) = _read(block, root=root)
    assert isinstance(src, MediaSource)
    return src


@pytest.fixture()
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "chart.png"
    path.write_bytes(PNG)
    return path


# -- every block form ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "modality", "data", "mime"),
    [
        ({"type": "image", "id": "img", "base64": _b64(PNG), "mime_type": "image/png"}, "image", PNG, "image/png"),
        ({"type": "audio", "id": "clip", "base64": _b64(WAV), "mime_type": "audio/wav"}, "audio", WAV, "audio/wav"),
        ({"type": "video", "id": "vid", "base64": _b64(MP4), "mime_type": "video/mp4"}, "video", MP4, "video/mp4"),
        # base64 broken over lines (as files and e-mails wrap it)
        ({"type": "image", "id": "wrapped", "base64": _b64(PNG)[:8] + "\n" + _b64(PNG)[8:]}, "image", PNG, None),
        # v1 url that is a data: URL (the MIME type comes from the URL)
        ({"type": "image", "id": "du", "url": f"data:image/png;base64,{_b64(PNG)}"}, "image", PNG, "image/png"),
        # a data: URL in the base64 field
        ({"type": "audio", "id": "du2", "base64": f"data:audio/wav;base64,{_b64(WAV)}"}, "audio", WAV, "audio/wav"),
        # LangChain v0 blocks
        (
            {"type": "image", "source_type": "base64", "data": _b64(PNG), "mime_type": "image/png", "id": "v0"},
            "image",
            PNG,
            "image/png",
        ),
        # OpenAI Chat Completions blocks
        (
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(PNG)}", "detail": "low"}},
            "image",
            PNG,
            "image/png",
        ),
        ({"type": "image_url", "image_url": f"data:image/png;base64,{_b64(PNG)}"}, "image", PNG, "image/png"),
        ({"type": "input_audio", "input_audio": {"data": _b64(WAV), "format": "wav"}}, "audio", WAV, "audio/wav"),
    ],
)
def test_inline_blocks_become_media_bytes(
    block: dict[str, Any], modality: str, data: bytes, mime: str | None
) -> None:
    src = _one(block)
    assert (src.modality, src.data, src.path, src.mime_type) == (modality, data, None, mime)
    assert src.id == block.get("id", f"{modality}-1")
    assert src.metadata["block_type"] == block["type"]


def test_openai_blocks_keep_their_format_details() -> None:
    img = _one({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(PNG)}", "detail": "low"}})
    assert img.metadata["detail"] == "low"
    clip = _one({"type": "input_audio", "input_audio": {"data": _b64(WAV), "format": "wav"}})
    assert clip.metadata["format"] == "wav"


def test_local_files_become_paths(png_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = tmp_path / "talk.wav"
    wav.write_bytes(WAV)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(MP4)
    monkeypatch.chdir(tmp_path)
    sources = _read(
        {"type": "image", "id": "by-file-url", "url": png_file.as_uri()},
        {"type": "image", "id": "by-localhost-url", "url": f"file://localhost{png_file}"},
        {"type": "audio", "id": "by-path-url", "url": str(wav)},
        {"type": "video", "id": "by-path-key", "path": str(clip)},
        {"type": "image", "id": "relative", "url": "chart.png"},
        {"type": "image", "source_type": "url", "url": png_file.as_uri()},  # v0 url block
        root=tmp_path,
    )
    assert [s.id for s in sources] == [
        "by-file-url",
        "by-localhost-url",
        "by-path-url",
        "by-path-key",
        "relative",
        "image-6",
    ]
    assert all(isinstance(s, MediaSource) and s.data is None for s in sources)
    expected = [png_file, png_file, wav, clip, png_file, png_file]
    assert [Path(s.path) for s in sources] == [p.resolve() for p in expected]
    # the MIME type is guessed from the file name when the block gives none
    mimes = [s.mime_type or "" for s in sources]
    assert mimes[:2] == ["image/png", "image/png"] and mimes[2].startswith("audio/") and mimes[3] == "video/mp4"


def test_file_url_with_spaces_is_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "my chart.png"
    path.write_bytes(PNG)
    assert Path(_one({"type": "image", "url": path.as_uri()}, root=tmp_path).path or "") == path.resolve()


def test_ids_count_with_the_other_source_blocks() -> None:
    sources = _read(
        {"type": "text-plain", "text": "A caption.", "mime_type": "text/plain"},
        {"type": "image", "base64": _b64(PNG), "mime_type": "image/png"},
        {"type": "input_audio", "input_audio": {"data": _b64(WAV), "format": "wav"}},
    )
    assert [s.id for s in sources] == ["source-1", "image-2", "audio-3"]
    assert isinstance(sources[0], TextSource)  # text blocks are unchanged


def test_langchain_generated_ids_are_replaced_by_stable_ones() -> None:
    block = create_image_block(base64=_b64(PNG), mime_type="image/png")
    assert str(block["id"]).startswith("lc_")
    src = _one(dict(block))
    assert src.id == "image-1"
    assert src.metadata["block_id"] == block["id"]


def test_extras_title_and_remote_url_ride_along() -> None:
    src = _one(
        {
            "type": "image",
            "id": "fig",
            "base64": _b64(PNG),
            "mime_type": "image/png",
            "url": "https://example.org/fig.png",  # informational: the bytes are given
            "extras": {"title": "Figure 1", "page": 3},
        }
    )
    assert (src.title, src.url, src.metadata["page"]) == ("Figure 1", "https://example.org/fig.png", 3)


def test_tool_message_media_blocks_are_sources() -> None:
    request = read_messages(
        [
            HumanMessage("What does the chart show?"),
            ToolMessage(
                content=[{"type": "image", "id": "tool-img", "base64": _b64(PNG), "mime_type": "image/png"}],
                tool_call_id="call-1",
            ),
        ]
    )
    assert [(s.id, s.modality) for s in request.sources] == [("tool-img", "image")]


def test_sources_kwarg_takes_media_sources_and_dicts(png_file: Path) -> None:
    request = read_messages(
        [HumanMessage("q")],
        [
            MediaSource(id="m1", modality="image", path=str(png_file)),
            {"id": "m2", "modality": "audio", "data": WAV},
            {"id": "t1", "text": "plain text"},
        ],
    )
    assert [type(s).__name__ for s in request.sources] == ["MediaSource", "MediaSource", "TextSource"]
    with pytest.raises(ValueError, match="source #0 \\('m3'\\) is invalid"):
        read_messages([HumanMessage("q")], [{"id": "m3", "modality": "video"}])


# -- bad input, named ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        (
            {"type": "image", "id": "remote", "url": "https://example.org/a.png"},
            UnsupportedContentError,
            r"'remote' of type 'image' is not supported with a remote url .*downloads nothing.*file:///",
        ),
        ({"type": "video", "url": "http://x/v.mp4"}, UnsupportedContentError, r"'video-1'.*downloads nothing"),
        ({"type": "audio", "url": "s3://bucket/a.wav"}, UnsupportedContentError, "remote url"),
        (
            {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}},
            UnsupportedContentError,
            r"'image-1' of type 'image_url' .*downloads nothing.*base64",
        ),
        (
            {"type": "image", "id": "up", "file_id": "file-abc"},
            UnsupportedContentError,
            r"image content block 'up' refers to an uploaded file \(file_id 'file-abc'\).*downloads nothing",
        ),
        (
            {"type": "image", "source_type": "id", "id": "file-xyz"},
            UnsupportedContentError,
            r"'image-1' refers to an uploaded file \(file_id 'file-xyz'\)",
        ),
        (
            {"type": "image", "id": "lan", "url": "file://otherhost/share/a.png"},
            UnsupportedContentError,
            r"'lan': file URL .* names another host",
        ),
        (
            {"type": "image", "id": "bad64", "base64": "not base64!!", "mime_type": "image/png"},
            ValueError,
            r"image content block 'bad64': the base64 data is not valid base64",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "@@@@", "format": "wav"}},
            ValueError,
            r"input_audio content block 'audio-1': the base64 data is not valid base64",
        ),
        (
            {"type": "image", "id": "bad-url", "url": "data:image/png;base64,%%%"},
            ValueError,
            "'bad-url': the base64 data is not valid base64",
        ),
        ({"type": "image", "id": "nocomma", "url": "data:image/png;base64"}, ValueError, "'nocomma': malformed data: URL"),
        ({"type": "audio", "id": "blank", "base64": "  "}, ValueError, "'blank': the base64 data is empty"),
        ({"type": "image", "id": "nothing"}, ValueError, "image content block 'nothing' carries no data"),
        ({"type": "image_url", "image_url": {}}, ValueError, "'image-1' has no image_url.url"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, ValueError, "'audio-1' has no input_audio.data"),
        (
            {"type": "image", "id": "mixed", "base64": _b64(WAV), "mime_type": "audio/wav"},
            ValueError,
            "image content block 'mixed': MIME type 'audio/wav' is not image",
        ),
        ({"type": "image", "id": "", "base64": _b64(PNG)}, ValueError, "empty id"),
    ],
)
def test_bad_media_blocks_are_named(block: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _read(block)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image", "id": "gone", "url": "file://{root}/no/such/dir/a.png"},
        {"type": "image", "id": "gone", "url": "{root}/no/such/dir/a.png"},
        {"type": "image", "id": "gone", "path": "{root}/no/such/dir/a.png"},
        {"type": "image", "id": "gone", "source_type": "url", "url": "file://{root}/no/such/dir/a.png"},
    ],
)
def test_missing_files_inside_media_root_are_named(block: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path.resolve()
    block = {k: v.format(root=root) for k, v in block.items()}
    with pytest.raises(MediaError, match=r"image content block 'gone': file '.*/no/such/dir/a.png' not found"):
        _read(block, root=root)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image", "id": "gone", "url": "file:///no/such/dir/a.png"},
        {"type": "image", "id": "gone", "path": "/no/such/dir/a.png"},
    ],
)
def test_local_files_are_refused_by_default(block: dict[str, Any]) -> None:
    with pytest.raises(MediaAccessError, match=r"image content block 'gone'.*refused.*media_root"):
        _read(block)


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"'folder'.* is not a file"):
        _read({"type": "video", "id": "folder", "path": str(tmp_path)}, root=tmp_path)


def test_duplicate_media_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate source id 'x'"):
        _read(
            {"type": "image", "id": "x", "base64": _b64(PNG)},
            {"type": "text-plain", "id": "x", "text": "t", "mime_type": "text/plain"},
        )


# -- through ChatOmniTrace: what the core receives, and citations back --------------------------


class RecordingTracer:
    """Records the sources ``ChatOmniTrace`` hands the core; answers with one located citation."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.config = TracerConfig()
        self.tokenizer = object()

    def stream(self, sources: Any, question: str, *, config: Any = None, **gen: Any) -> Iterator[Any]:
        self.calls.append({"sources": list(sources), "question": question, "config": config})
        yield FinalEvent(answer=_located_answer(list(sources)))


def _located_answer(sources: list[Any]) -> TracedAnswer:
    first, second = sources[0], sources[-1]
    citations = [
        make_citation(
            first.id, 0.8, unit_id=f"{first.id}#3", modality="image", boxes=[(0, 0, 16, 16), (16, 0, 32, 16)]
        ),
        make_citation(second.id, 0.6, "it rises", unit_id=f"{second.id}#1", modality="audio",
                      seconds=[(1.0, 2.5), (4.0, 5.0)]),
    ]  # fmt: skip
    return make_answer(
        [("The chart rises.", citations, {"source_mass": {first.id: 0.6, second.id: 0.4}})],
        text="The chart rises. She says it twice.",
        sources=[make_source_info(s.id, modality=s.modality) for s in sources],
        model="recording",
    )


def test_chat_model_hands_media_to_the_core_and_locates_citations() -> None:
    tracer = RecordingTracer()
    llm = ChatOmniTrace(tracer=tracer)
    msg = llm.invoke(
        [
            HumanMessage(
                content=[
                    {"type": "text", "text": "What does the chart show?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(PNG)}"}},
                    # LangChain converts this to a v1 audio block with a generated id
                    {"type": "input_audio", "input_audio": {"data": _b64(WAV), "format": "wav"}},
                ]
            )
        ]
    )
    (call,) = tracer.calls
    assert [(s.id, s.modality, s.data) for s in call["sources"]] == [("image-1", "image", PNG), ("audio-2", "audio", WAV)]
    assert call["question"] == "What does the chart show?"
    image_ann, audio_ann = msg.content[0]["annotations"]  # type: ignore[index]
    assert image_ann["id"] == "image-1"
    assert image_ann["extras"]["modality"] == "image"
    assert image_ann["extras"]["boxes"] == [[0, 0, 16, 16], [16, 0, 32, 16]]
    assert "seconds" not in image_ann["extras"]
    assert audio_ann["extras"]["modality"] == "audio"
    assert audio_ann["extras"]["seconds"] == [[1.0, 2.5], [4.0, 5.0]]
    assert "boxes" not in audio_ann["extras"]
    docs = {d.id: d.metadata for d in cited_documents(msg)}
    assert docs["image-1"]["cited_boxes"] == [[0, 0, 16, 16], [16, 0, 32, 16]]
    assert docs["audio-2"]["cited_seconds"] == [[1.0, 2.5], [4.0, 5.0]]
    assert docs["audio-2"]["modality"] == "audio"


def test_text_citations_carry_no_location() -> None:
    sentence = make_sentence(0, "x")
    citation = make_citation("d", 1.0, "t")
    extras = citation_annotation(sentence, citation)["extras"]  # type: ignore[typeddict-item]
    assert extras["modality"] == "text" and "seconds" not in extras and "boxes" not in extras
    # seconds come from Citation.seconds, not from the source's metadata
    located = citation.model_copy(update={"metadata": {"seconds": "not this"}, "seconds": [(0.5, 1.25)]})
    assert citation_annotation(sentence, located)["extras"]["seconds"] == [[0.5, 1.25]]  # type: ignore[typeddict-item]


# -- a real Tracer on the tiny text model ------------------------------------------------------


def test_text_model_refuses_an_image_block_by_modality(tiny_tracer: Any) -> None:
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=4)
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is shown?"},
            {"type": "image", "id": "photo", "base64": _b64(PNG), "mime_type": "image/png"},
        ]
    )
    with pytest.raises(UnsupportedModalityError, match=r"'tiny-llama' cannot take image sources \(source 'photo'\)"):
        llm.invoke([message])


def test_text_model_reads_an_audio_block_through_asr(tiny_tracer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[MediaSource] = []

    def transcript_source(source: MediaSource, model_path: str | None = None) -> TextSource:
        heard.append(source)
        text = "Valbrook Works was founded in 1905. The lighthouse stands 42 metres tall."
        return TextSource(
            id=source.id,
            modality="audio",
            text=text,
            segments=[
                TimedSegment(start_s=0.0, end_s=2.0, char_start=0, char_end=35),
                TimedSegment(start_s=2.5, end_s=5.0, char_start=36, char_end=len(text)),
            ],
        )

    fake_asr = types.ModuleType("omnitrace_core.media.asr")
    fake_asr.transcript_source = transcript_source  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "omnitrace_core.media.asr", fake_asr)
    llm = ChatOmniTrace(tracer=tiny_tracer, max_tokens=6, tracer_config=TracerConfig(audio_fallback="asr"))
    message = HumanMessage(
        content=[
            {"type": "text", "text": "When was Valbrook Works founded?"},
            {"type": "audio", "id": "talk", "base64": _b64(WAV), "mime_type": "audio/wav"},
        ]
    )
    msg = llm.invoke([message])
    assert [(s.id, s.data) for s in heard] == [("talk", WAV)]
    result = msg.response_metadata["omnitrace"]
    assert [(s["id"], s["modality"]) for s in result["sources"]] == [("talk", "audio")]
    assert [u["seconds"] for u in result["sources"][0]["units"]] == [[0.0, 2.0], [2.5, 5.0]]
    for ann in msg.content[0].get("annotations", []):  # type: ignore[union-attr]
        assert ann["extras"]["modality"] == "audio" and ann["extras"]["seconds"]
