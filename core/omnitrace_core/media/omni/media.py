"""Reading media sources: images with PIL, audio and video with PyAV (ffmpeg's libraries).

Every failure is a :class:`~omnitrace_core.errors.MediaError` naming the source, so a caller
with twenty sources knows which file is missing or corrupt. Decoding happens here rather than
in the transformers processor so that nothing needs torchvision / torchcodec, and so that the
seconds the units carry are measured on the same samples the model reads.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from omnitrace_core.errors import MediaError
from omnitrace_core.sources import MediaSource


@dataclass(frozen=True)
class DecodedVideo:
    """Frames sampled from a video at a fixed rate, and optionally its audio track.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB frames, frame ``k`` taken at ``k / fps`` seconds.
        fps: The sampling rate of ``frames``.
        duration: Length of the video in seconds.
        audio: Its audio track as mono float32 at the requested sampling rate (None when the
            video is silent or the audio was not asked for).
    """

    frames: np.ndarray
    fps: float
    duration: float
    audio: np.ndarray | None


def _open_bytes(src: MediaSource) -> BinaryIO:
    if src.data is not None:
        return io.BytesIO(src.data)
    assert src.path is not None  # MediaSource guarantees one of them
    path = Path(src.path).expanduser()
    try:
        if not path.is_file():
            raise MediaError(f"{src.modality} source {src.id!r}: file {str(path)[:200]!r} does not exist")
        return path.open("rb")
    except OSError as exc:  # a symlink loop, a name too long, permissions
        raise MediaError(
            f"{src.modality} source {src.id!r}: cannot open {str(path)[:200]!r} ({exc.strerror})"
        ) from exc


def load_image(src: MediaSource) -> Any:
    """The source's image as an upright RGB ``PIL.Image`` (the shared policy of
    :func:`omnitrace_core.media.load_image`: EXIF orientation applied, longest side capped,
    decompression bombs refused; ``info["original_size"]`` keeps the file's size, so region
    boxes are reported in the file's pixels).

    Raises:
        MediaError: if the file is missing or not a readable image (names the source).
    """
    from omnitrace_core.media.loading import load_image as load_shared

    return load_shared(src)


def load_audio(src: MediaSource, sampling_rate: int) -> np.ndarray:
    """The source's sound as mono float32 samples at ``sampling_rate``.

    Raises:
        MediaError: if the file is missing, unreadable, has no audio stream or no samples.
    """
    with _open_bytes(src) as handle:
        samples = _decode_audio(handle, src, sampling_rate, required=True)
    assert samples is not None
    return samples


def load_video(
    src: MediaSource,
    fps: float,
    sampling_rate: int,
    with_audio: bool,
    max_pixels: int | None = None,
) -> DecodedVideo:
    """Sample the video's frames at ``fps`` (and decode its audio track when asked).

    Frame ``k`` is the first decoded frame at or after ``k / fps`` seconds, so a unit's seconds
    are exact on the sampling grid. ``max_pixels`` shrinks frames while decoding (the processor
    would shrink them anyway; this bounds memory for long, large videos).

    Raises:
        MediaError: if the file is missing, unreadable or has no video frames.
    """
    import av

    with _open_bytes(src) as handle:
        try:
            with av.open(handle, mode="r") as container:
                if not container.streams.video:
                    raise MediaError(f"video source {src.id!r} has no video stream")
                frames, duration = _sample_frames(container, container.streams.video[0], fps, max_pixels)
        except MediaError:
            raise
        except Exception as exc:  # PyAV raises many FFmpeg error classes
            raise MediaError(f"video source {src.id!r} is not a readable video: {exc}") from exc
        if not frames:
            raise MediaError(f"video source {src.id!r} has no frames")
        audio = None
        if with_audio:
            handle.seek(0)
            audio = _decode_audio(handle, src, sampling_rate, required=False)
    return DecodedVideo(frames=np.stack(frames), fps=fps, duration=duration, audio=audio)


def _sample_frames(
    container: Any, stream: Any, fps: float, max_pixels: int | None
) -> tuple[list[np.ndarray], float]:
    frames: list[np.ndarray] = []
    last_time = 0.0
    last: np.ndarray | None = None
    for frame in container.decode(stream):
        t = float(frame.time) if frame.time is not None else last_time + 1.0 / fps
        last_time = t
        if t < len(frames) / fps - 1e-6:
            continue  # before the next sampling instant: not needed
        last = _rgb(frame, max_pixels)
        # The first frame at or after an instant is that instant's frame (a gap fills several).
        while len(frames) / fps <= t + 1e-6:
            frames.append(last)
    rate = float(stream.average_rate) if stream.average_rate else fps
    duration = _duration(container, stream) or (last_time + 1.0 / rate)
    # Instants before the end that no later frame reached hold the last frame.
    while last is not None and len(frames) < math.ceil(duration * fps - 1e-6):
        frames.append(last)
    return frames, duration


def _rgb(frame: Any, max_pixels: int | None) -> np.ndarray:
    if max_pixels and frame.width * frame.height > max_pixels:
        scale = math.sqrt(max_pixels / (frame.width * frame.height))
        width, height = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
        return np.asarray(frame.to_ndarray(format="rgb24", width=width, height=height))
    return np.asarray(frame.to_ndarray(format="rgb24"))


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def _decode_audio(
    handle: BinaryIO, src: MediaSource, sampling_rate: int, required: bool
) -> np.ndarray | None:
    import av

    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.audio:
                if required:
                    raise MediaError(f"{src.modality} source {src.id!r} has no audio stream")
                return None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            chunks: list[np.ndarray] = []
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many FFmpeg error classes
        raise MediaError(f"{src.modality} source {src.id!r} has unreadable audio: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        if required:
            raise MediaError(f"{src.modality} source {src.id!r} has no audio samples")
        return None
    return samples
