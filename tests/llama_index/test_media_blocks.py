"""LlamaIndex image / audio / video blocks and media nodes become media sources; citations locate.

Blocks and nodes are read without a model; a recording tracer checks what ``OmniTraceLLM`` and
the citation query engine hand the core and that located citations (seconds, boxes) come back
in ``CitationBlock``s and the engine's metadata; the tiny random Llama checks that a text model
refuses an image by modality with the core's ``UnsupportedModalityError``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    CitableBlock,
    CitationBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    VideoBlock,
)
from llama_index.core.schema import ImageNode, MediaResource, Node, NodeWithScore, QueryBundle, TextNode

from omnitrace_core import FinalEvent, InvalidInputError, SentenceEvent, TextDelta, TextSource, TracerConfig
from omnitrace_core.errors import MediaAccessError, MediaError, UnsupportedModalityError
from omnitrace_core.media.paths import NO_LOCAL_FILES, LocalMediaPolicy
from omnitrace_core.sources import MediaSource
from omnitrace_integrations.llama_index import OmniTraceCitationQueryEngine, OmniTraceLLM
from omnitrace_integrations.llama_index.llm import media_location_info
from omnitrace_integrations.llama_index.sources import (
    UnsupportedContentError,
    coerce_sources,
    media_block_source,
    node_source,
    parse_messages,
    prepare_node_sources,
)
from tests.factories import make_answer, make_citation, make_source_info, make_unit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 8
QUESTION = "What does the chart show?"


def _user(*blocks: Any) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, blocks=[*blocks, TextBlock(text=QUESTION)])]


def _sources(*blocks: Any, root: Path | None = None) -> list[Any]:
    """Sources of a user message holding ``blocks`` (local files allowed from ``root`` when given)."""
    policy = LocalMediaPolicy.create(media_root=root) if root is not None else NO_LOCAL_FILES
    return parse_messages(_user(*blocks), policy).prepared.sources


@pytest.fixture()
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "chart.png"
    path.write_bytes(PNG)
    return path


# -- chat blocks ---------------------------------------------------------------------------------


def test_block_bytes_become_media_data() -> None:
    """LlamaIndex stores block bytes base64-encoded; the source holds the file's own bytes."""
    image, audio, video = _sources(
        ImageBlock(image=PNG), AudioBlock(audio=WAV, format="wav"), VideoBlock(video=MP4, video_mimetype="video/mp4")
    )
    assert [(s.id, s.modality, s.data, s.path) for s in (image, audio, video)] == [
        ("image-1", "image", PNG, None),
        ("audio-2", "audio", WAV, None),
        ("video-3", "video", MP4, None),
    ]
    assert image.mime_type == "image/png"  # guessed by LlamaIndex from the bytes
    assert (audio.mime_type or "").startswith("audio/") and video.mime_type == "video/mp4"
    assert all(isinstance(s, MediaSource) and s.metadata["block_type"] == s.modality for s in (image, audio, video))


def test_file_object_is_read_as_raw_bytes() -> None:
    (src,) = _sources(ImageBlock(image=BytesIO(PNG), image_mimetype="image/png"))
    assert src.data == PNG


def test_paths_file_urls_and_data_urls(png_file: Path, tmp_path: Path) -> None:
    wav = tmp_path / "talk.wav"
    wav.write_bytes(WAV)
    by_path, by_file_url, by_data_url = _sources(
        ImageBlock(path=png_file),
        AudioBlock(url=wav.as_uri()),
        VideoBlock(url="data:video/mp4;base64," + base64.b64encode(MP4).decode()),
        root=tmp_path,
    )
    assert (Path(by_path.path), by_path.data, by_path.mime_type) == (png_file.resolve(), None, "image/png")
    assert (Path(by_file_url.path), by_file_url.url) == (wav.resolve(), wav.as_uri())
    assert (by_data_url.data, by_data_url.mime_type, by_data_url.url) == (MP4, "video/mp4", None)


def test_media_ids_are_numbered_across_messages_and_avoid_taken_ids() -> None:
    messages = [
        ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(image=PNG), TextBlock(text="Look.")]),
        ChatMessage(role=MessageRole.ASSISTANT, content="Seen."),
        ChatMessage(
            role=MessageRole.USER,
            blocks=[
                CitableBlock(source="image-2", title="Named", content="A caption."),
                ImageBlock(image=PNG + b"\x01"),
                AudioBlock(audio=WAV),
                TextBlock(text=QUESTION),
            ],
        ),
    ]
    assert [s.id for s in parse_messages(messages).prepared.sources] == ["image-1", "image-2", "image-3", "audio-4"]


def test_citable_image_takes_the_blocks_source_and_title(png_file: Path) -> None:
    block = CitableBlock(source="fig1", title="Figure 1", content=[ImageBlock(path=png_file)])
    (fig,) = _sources(block, root=png_file.parent)
    assert (fig.id, fig.title, fig.modality, Path(fig.path)) == ("fig1", "Figure 1", "image", png_file.resolve())
    caption, image = _sources(
        CitableBlock(source="fig2", title="Figure 2", content=[TextBlock(text="Sales rise."), ImageBlock(image=PNG)])
    )
    assert (caption.id, caption.text) == ("fig2", "Sales rise.")
    assert (image.id, image.title, image.data) == ("fig2:image-1", "Figure 2", PNG)


def test_the_same_image_twice_is_kept_once_and_a_different_one_refused() -> None:
    prepared = coerce_sources(
        [
            MediaSource(id="m", modality="image", data=PNG),
            {"id": "m", "modality": "image", "data": PNG},
            {"id": "t", "text": "plain"},
        ]
    )
    assert [s.id for s in prepared.sources] == ["m", "t"]
    assert "identical image content" in prepared.notes[0]
    with pytest.raises(InvalidInputError, match="'m'"):
        coerce_sources([{"id": "m", "modality": "image", "data": PNG}, {"id": "m", "modality": "image", "data": WAV}])
    with pytest.raises(InvalidInputError, match=r"source #0 \('v'\) is invalid"):
        coerce_sources([{"id": "v", "modality": "video"}])


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        (
            ImageBlock(url="http://example.com/a.png"),
            UnsupportedContentError,
            r"image block 'image-1' has only a remote url \('http://example.com/a.png'\): nothing is downloaded; "
            r"pass the bytes themselves",
        ),
        (AudioBlock(url="https://example.com/a.wav"), UnsupportedContentError, "'audio-1' has only a remote url"),
        (VideoBlock(url="s3://bucket/v.mp4"), UnsupportedContentError, "'video-1' has only a remote url"),
        (
            ImageBlock(url="data:image/png;base64,!!!!"),
            InvalidInputError,
            "image block 'image-1': the base64 data is not valid base64",
        ),
        (
            ImageBlock(url="file:///no/such/dir/a.png"),
            MediaAccessError,
            r"'image-1': local path '/no/such/dir/a.png' refused: local files in messages are refused by default",
        ),
        (ImageBlock(), InvalidInputError, "image block 'image-1' has no content"),
        (
            ImageBlock(image=PNG, image_mimetype="audio/wav"),
            InvalidInputError,
            "'image-1': MIME type 'audio/wav' is not image",
        ),
    ],
)
def test_bad_blocks_are_named(block: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _sources(block)


def test_a_block_whose_file_went_away_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gone.wav"
    path.write_bytes(WAV)
    block = AudioBlock(path=path)  # LlamaIndex checks the path exists when the block is built
    path.unlink()
    with pytest.raises(MediaError, match=r"audio block 'audio-1': file '.*gone.wav' not found"):
        _sources(block, root=tmp_path)


def test_corrupted_block_bytes_are_named() -> None:
    block = ImageBlock(image=PNG)
    block.image = b"not base64 at all!"  # LlamaIndex would have stored base64
    with pytest.raises(InvalidInputError, match="image block 'shot': the base64 data is not valid base64"):
        media_block_source(block, "shot")


# -- nodes ---------------------------------------------------------------------------------------


def test_media_nodes_become_media_sources(png_file: Path) -> None:
    from_b64 = node_source(
        NodeWithScore(node=ImageNode(id_="n1", image=base64.b64encode(PNG).decode(), metadata={"title": "Chart"}), score=0.7)
    )
    assert isinstance(from_b64, MediaSource)
    assert (from_b64.id, from_b64.data, from_b64.title) == ("n1", PNG, "Chart")
    assert from_b64.metadata["retrieval_score"] == 0.7 and from_b64.metadata["node_id"] == "n1"
    from_path = node_source(ImageNode(id_="n2", image_path=str(png_file)))
    assert isinstance(from_path, MediaSource) and Path(from_path.path or "") == png_file
    audio = node_source(Node(id_="n3", audio_resource=MediaResource(data=WAV, mimetype="audio/wav")))
    assert isinstance(audio, MediaSource) and (audio.modality, audio.data, audio.mime_type) == ("audio", WAV, "audio/wav")
    video = node_source(Node(id_="n4", video_resource=MediaResource(path=png_file.with_name("clip.mp4"))))
    assert isinstance(video, str) and "'n4' has no text (video content)" in video and "not found" in video


def test_remote_only_nodes_are_skipped_with_a_note_not_downloaded() -> None:
    prepared = prepare_node_sources(
        [
            NodeWithScore(node=ImageNode(id_="web", image_url="https://example.com/a.png")),
            NodeWithScore(node=Node(id_="pod", audio_resource=MediaResource(url="https://example.com/a.mp3"))),
            NodeWithScore(node=TextNode(id_="t", text="Text.")),
        ]
    )
    assert [s.id for s in prepared.sources] == ["t"]
    assert "'web' has no text (image content)" in prepared.notes[0] and "nothing is downloaded" in prepared.notes[0]
    assert "'pod' has no text (audio content)" in prepared.notes[1]


def test_node_with_invalid_base64_is_named() -> None:
    with pytest.raises(InvalidInputError, match=r"node 'bad' \(image\): the base64 data is not valid base64"):
        node_source(ImageNode(id_="bad", image="@@@ not base64"))


# -- through the LLM and the engine --------------------------------------------------------------


@dataclass
class _Loaded:
    name: str = "recording"
    context_window: int = 4096


@dataclass
class RecordingTracer:
    """Records what the integration hands the core; cites the first source with boxes and the
    last one with seconds."""

    config: TracerConfig = field(default_factory=TracerConfig)
    loaded: _Loaded = field(default_factory=_Loaded)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def stream(self, sources: Any, question: str, *, config: Any = None, **gen: Any) -> Iterator[Any]:
        sources = list(sources)
        self.calls.append({"sources": sources, "question": question, "config": config})
        text = "It rises twice."
        first, last = sources[0], sources[-1]
        cites = [
            make_citation(first.id, 0.7, unit_id=f"{first.id}#0", modality="image", boxes=[(0, 0, 8, 8)]),
            make_citation(last.id, 0.3, unit_id=f"{last.id}#1", modality="audio", seconds=[(1.0, 2.25), (3.5, 4.0)]),
        ]
        answer = make_answer(
            [(text, cites, {"token_end": 1, "source_mass": {first.id: 0.7, last.id: 0.3}})],
            sources=[
                make_source_info(
                    s.id, modality=s.modality, units=[make_unit(s.id, unit_id=f"{s.id}#{k}", index=k) for k in range(2)]
                )
                for s in sources
            ],
            model=self.loaded.name,
            generated_tokens=3,
        )
        yield TextDelta(text=text, token_index=0)
        yield SentenceEvent(sentence=answer.sentences[0])
        yield FinalEvent(answer=answer)


def test_llm_hands_media_to_the_core_and_citation_blocks_locate(png_file: Path) -> None:
    tracer = RecordingTracer()
    llm = OmniTraceLLM(tracer=tracer, tracer_config=TracerConfig(audio_fallback="asr"), media_root=str(png_file.parent))
    response = llm.chat(_user(ImageBlock(path=png_file), AudioBlock(audio=WAV, format="wav")))
    (call,) = tracer.calls
    # the model sees short labels; the caller's ids come back in every result
    assert [(s.id, s.modality) for s in call["sources"]] == [("doc1", "image"), ("doc2", "audio")]
    assert call["config"].audio_fallback == "asr"  # tracer_config applies per call with a given tracer
    blocks = [b for b in response.message.blocks if isinstance(b, CitationBlock)]
    assert [b.source for b in blocks] == ["image-1", "audio-2"]
    image_info, audio_info = (b.additional_location_info for b in blocks)
    assert {k: image_info[k] for k in ("box0_x0", "box0_y0", "box0_x1", "box0_y1")} == {
        "box0_x0": 0, "box0_y0": 0, "box0_x1": 8, "box0_y1": 8,
    }  # fmt: skip
    assert not any(k.startswith("span") for k in image_info)
    assert [audio_info[k] for k in ("span0_start_ms", "span0_end_ms", "span1_start_ms", "span1_end_ms")] == [
        1000, 2250, 3500, 4000,
    ]  # fmt: skip
    assert audio_info["sentence_index"] == 0
    cited = response.additional_kwargs["omnitrace"]["sentences"][0]["citations"]
    assert cited[1]["seconds"] == [[1.0, 2.25], [3.5, 4.0]] and cited[0]["boxes"] == [[0, 0, 8, 8]]


def test_text_citations_get_no_media_location() -> None:
    assert media_location_info(make_citation("d", 1.0, "t")) == {}


class _ListRetriever(BaseRetriever):
    def __init__(self, nodes: list[NodeWithScore]) -> None:
        super().__init__()
        self._nodes = nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return list(self._nodes)


def test_engine_cites_retrieved_media_nodes_with_their_location(png_file: Path) -> None:
    tracer = RecordingTracer()
    nodes = [
        NodeWithScore(node=ImageNode(id_="chart", image_path=str(png_file)), score=0.9),
        NodeWithScore(node=Node(id_="talk", audio_resource=MediaResource(data=WAV, mimetype="audio/wav")), score=0.8),
    ]
    engine = OmniTraceCitationQueryEngine(_ListRetriever(nodes), llm=OmniTraceLLM(tracer=tracer))
    response = engine.query(QUESTION)
    assert [type(s).__name__ for s in tracer.calls[0]["sources"]] == ["MediaSource", "MediaSource"]
    assert str(response) == "It rises twice. [1][2]"
    assert [n.node.node_id for n in response.source_nodes] == ["chart", "talk"]
    answer = response.metadata["omnitrace"]["answer"]
    cites = answer["sentences"][0]["citations"]
    assert (cites[0]["source_id"], cites[0]["boxes"]) == ("chart", [[0, 0, 8, 8]])
    assert (cites[1]["source_id"], cites[1]["seconds"]) == ("talk", [[1.0, 2.25], [3.5, 4.0]])


# -- a real Tracer on the tiny text model --------------------------------------------------------


def test_text_model_refuses_an_image_block_by_modality(tiny_tracer: Any) -> None:
    llm = OmniTraceLLM(tracer=tiny_tracer, max_new_tokens=4)
    with pytest.raises(UnsupportedModalityError, match=r"'tiny-llama' cannot take image sources \(source 'doc1'\)"):
        llm.chat(_user(ImageBlock(image=PNG)))


def test_text_sources_are_unchanged_next_to_media() -> None:
    text, image = _sources(CitableBlock(source="n1", title="A", content="Alpha."), ImageBlock(image=PNG))
    assert isinstance(text, TextSource) and (text.id, text.text) == ("n1", "Alpha.")
    assert isinstance(image, MediaSource)
