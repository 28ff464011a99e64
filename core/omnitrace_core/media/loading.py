"""Loading and checking media files: audio, images, video, and the system tools around them.

Every media path in the library (speech recognition, image and video prompts, the audio
benchmark) goes through here, so a bad file fails in one way everywhere: a
:class:`~omnitrace_core.errors.MediaError` naming the source id and the path, saying what is
wrong (missing, empty, truncated, corrupt or unsupported) instead of a decoder's traceback.

The decoders are optional extras and imported only when a function needs them: PyAV (via
faster-whisper) for audio and video, Pillow for images.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from omnitrace_core.errors import MediaError, MissingToolError
from omnitrace_core.sources import MediaSource

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

#: Whisper (and every speech model we feed) expects 16 kHz mono.
SAMPLE_RATE = 16_000

#: Images whose longest side exceeds this are downscaled (aspect kept) on load: vision
#: encoders tile or resize far below it anyway, and a 20k-pixel scan would only cost memory.
MAX_IMAGE_SIDE = 4096

#: Images with more pixels than this are refused before decoding: a small compressed file can
#: declare a huge canvas (a decompression bomb) and exhaust memory when decoded. 64 MP is
#: above any camera or scan a prompt needs, and below Pillow's own bomb limit (2 x 89 MP).
MAX_IMAGE_PIXELS = 64_000_000

AUDIO_EXTRA = "pip install 'omnitrace-integrations[audio]'"

#: Debian / Ubuntu package that provides each system tool we call.
_APT_PACKAGES = {
    "espeak-ng": "espeak-ng",
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "tesseract": "tesseract-ocr",
}

MediaInput = MediaSource | str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reads from a video's header.

    Attributes:
        duration_s: Length in seconds.
        fps: Average frame rate (frames per second).
        frames: Frame count (from the header, else ``duration_s * fps`` rounded).
        width: Frame width in pixels.
        height: Frame height in pixels.
        has_audio: Whether the file also holds an audio stream.
    """

    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    has_audio: bool


def describe(source: MediaInput) -> str:
    """How errors name a media input: its source id and path (or its size, for bytes)."""
    if isinstance(source, MediaSource):
        size = f"{len(source.data or b'')} bytes"
        where = repr(_short(str(source.path))) if source.path is not None else size
        return f"{source.modality} source {source.id!r} ({where})"
    if isinstance(source, bytes):
        return f"media data ({len(source)} bytes)"
    return repr(_short(str(source)))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_input(source: MediaInput) -> str | BinaryIO:
    """A path that exists, or a file object over in-memory bytes; MediaError if neither."""
    data = source.data if isinstance(source, MediaSource) else source if isinstance(source, bytes) else None
    if data is not None:
        if len(data) == 0:
            raise MediaError(f"{describe(source)} is empty (0 bytes)")
        return io.BytesIO(data)
    path = Path(str(source.path if isinstance(source, MediaSource) else source))
    try:
        exists, is_file = path.exists(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except (OSError, ValueError) as exc:  # a symlink loop, a name too long, a NUL byte...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MediaError(f"{describe(source)}: cannot be opened ({reason})") from exc
    if not exists:
        try:
            where = str(path.resolve())
        except (OSError, RuntimeError, ValueError):  # a symlink loop cannot be resolved
            where = str(path.absolute())
        raise MediaError(f"{describe(source)}: file not found (resolved to {where!r})")
    if not is_file:
        raise MediaError(f"{describe(source)}: not a file")
    if size == 0:
        raise MediaError(f"{describe(source)} is empty (0 bytes)")
    return str(path)


def _head(opened: str | BinaryIO, size: int) -> bytes:
    if isinstance(opened, str):
        with open(opened, "rb") as f:
            return f.read(size)
    pos = opened.tell()
    head = opened.read(size)
    opened.seek(pos)
    return head


def _file_size(opened: str | BinaryIO) -> int:
    if isinstance(opened, str):
        return os.path.getsize(opened)
    pos = opened.tell()
    opened.seek(0, io.SEEK_END)
    size = opened.tell()
    opened.seek(pos)
    return size


def _check_wav_complete(opened: str | BinaryIO, label: str) -> None:
    """Refuse a WAV whose data chunk is cut short.

    FFmpeg decodes whatever samples a truncated WAV still holds and reports the shorter
    length, so a half-copied recording would otherwise be transcribed as if it were whole.
    The RIFF header states the data size, which makes truncation detectable for WAV (other
    formats are streams: a cut file decodes up to the cut, and that is all we can know).
    A streamed WAV whose header gives 0 or 0xFFFFFFFF as the size is left alone.
    """
    head = _head(opened, 4096)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16 : pos + 20])[0] if pos + 20 <= len(head) else 0
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):
                return
            available = _file_size(opened) - (pos + 8)
            if available < size:
                said = f"{size / byte_rate:.2f} s" if byte_rate else f"{size} bytes"
                held = f"{max(0, available) / byte_rate:.2f} s" if byte_rate else f"{max(0, available)} bytes"
                raise MediaError(
                    f"{label} is truncated: its WAV header declares {said} of audio but the file "
                    f"holds only {held} (an interrupted copy or recording?)"
                )
            return
        pos += 8 + size + (size & 1)


def load_audio(source: MediaInput) -> tuple[np.ndarray, float]:
    """Decode any audio (or video's audio) file to 16 kHz mono float32 samples.

    Decoding goes through ``faster_whisper.decode_audio`` (PyAV, FFmpeg bundled), so every
    format FFmpeg reads works without a system ffmpeg.

    Args:
        source: A :class:`~omnitrace_core.sources.MediaSource` (``path`` or ``data``), a path,
            or the file's bytes.

    Returns:
        The samples in ``[-1, 1]`` and the duration in seconds.

    Raises:
        MediaError: the file is missing, empty, truncated (WAV), corrupt, in a format FFmpeg
            cannot read, has no audio stream, or decodes to zero samples; the message names
            the source id and path.
        ImportError: faster-whisper is not installed (names the extra to install).
    """
    label = describe(source)
    opened = _open_input(source)
    _check_wav_complete(opened, label)
    av = _import_av()
    try:
        with av.open(opened, mode="r", metadata_errors="ignore") as container:
            has_audio = bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(
            f"{label} is not a readable audio file (corrupt, or a format FFmpeg does not read): {exc}"
        ) from exc
    if not has_audio:
        raise MediaError(f"{label} holds no audio stream")
    if not isinstance(opened, str):
        opened.seek(0)
    from faster_whisper import decode_audio

    try:
        samples = decode_audio(opened, sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{label} could not be decoded (corrupt audio data): {exc}") from exc
    if samples.size == 0:
        raise MediaError(f"{label} holds no audio samples (zero-length audio)")
    return samples, samples.size / SAMPLE_RATE


def load_image(source: MediaInput, *, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Open an image as RGB, upright, with its longest side capped at ``max_side`` pixels.

    Policy: EXIF orientation is applied (phone photos are stored sideways); the first frame
    of an animation is used; transparency is dropped; an image larger than ``max_side`` on
    its longest side is downscaled with its aspect ratio kept. The loaded image's
    ``info["original_size"]`` is the file's ``(width, height)``, so pixel boxes found on the
    loaded image can be scaled back to the file's pixels.

    Raises:
        MediaError: missing / empty / corrupt / truncated file, a format Pillow cannot read,
            or more than :data:`MAX_IMAGE_PIXELS` pixels (a possible decompression bomb,
            refused before decoding); the message names the source id and path.
        ImportError: Pillow is not installed.
    """
    label = describe(source)
    opened = _open_input(source)
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow ships with the extras
        raise ImportError("reading images needs Pillow: pip install 'omnitrace-integrations[media]'") from exc
    try:
        image = Image.open(opened)  # lazy: reads the header only
    except UnidentifiedImageError as exc:
        raise MediaError(f"{label} is not an image in a format Pillow reads (or it is corrupt)") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{label} could not be opened as an image: {exc}") from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise MediaError(
            f"{label} declares {width}x{height} = {width * height / 1e6:.0f} MP, over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (refused before decoding: a possible "
            "decompression bomb); downscale it first"
        )
    try:
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        rgb = upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{label} is truncated or corrupt: {exc}") from exc
    original = rgb.size
    if max(original) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    rgb.info["original_size"] = original
    return rgb


def probe_video(source: MediaInput) -> VideoInfo:
    """Read a video's duration, frame rate and size from its header (no frames decoded).

    Raises:
        MediaError: missing / empty / corrupt file, a format FFmpeg does not read, no video
            stream, or no usable duration / frame rate; names the source id and path.
        ImportError: PyAV is not installed (names the extra to install).
    """
    label = describe(source)
    opened = _open_input(source)
    av = _import_av()
    try:
        with av.open(opened, mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise MediaError(f"{label} holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            frames = int(stream.frames) or round(duration * fps)
            info = VideoInfo(
                duration_s=duration,
                fps=fps,
                frames=frames,
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                has_audio=bool(container.streams.audio),
            )
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(
            f"{label} is not a readable video (corrupt, or a format FFmpeg does not read): {exc}"
        ) from exc
    if info.fps <= 0 or info.duration_s <= 0:
        raise MediaError(f"{label} has no usable frame rate / duration ({info.fps} fps, {info.duration_s} s)")
    return info


def require_tool(name: str) -> str:
    """The full path of a system tool, or :class:`MissingToolError` with the install command.

    Used before shelling out to ``espeak-ng`` (the audio benchmark and examples synthesise
    speech) or ``ffmpeg``: a missing tool otherwise surfaces as a bare ``FileNotFoundError``.
    """
    found = shutil.which(name)
    if found is None:
        package = _APT_PACKAGES.get(name, name)
        raise MissingToolError(
            f"{name!r} is not installed (not on PATH). Install it: sudo apt-get install -y {package}"
        )
    return found


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"decoding audio / video needs PyAV and faster-whisper: {AUDIO_EXTRA}") from exc
    return av
