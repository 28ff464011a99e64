"""Media loading: every bad file fails with a MediaError naming the source and saying what is wrong."""

from __future__ import annotations

import importlib.util
import io
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from omnitrace_core.errors import MediaError, MissingToolError
from omnitrace_core.media.loading import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    SAMPLE_RATE,
    load_audio,
    load_image,
    probe_video,
    require_tool,
)
from omnitrace_core.sources import MediaSource

Image = pytest.importorskip("PIL.Image", reason="image loading needs Pillow")
needs_av = pytest.mark.skipif(
    importlib.util.find_spec("faster_whisper") is None,
    reason="audio / video decoding needs the audio extra: pip install 'omnitrace-integrations[audio]'",
)


def _wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")


# ----------------------------------------------------------------------------------- audio


@needs_av
def test_load_audio_resamples_to_16k_mono(tmp_path: Path):
    stereo = np.repeat(_tone(1.5, 22_050)[:, None], 2, axis=1).reshape(-1)
    path = tmp_path / "tone.wav"
    path.write_bytes(_wav_bytes(stereo, rate=22_050, channels=2))
    samples, duration = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert duration == pytest.approx(1.5, abs=0.01)
    assert samples.size == pytest.approx(1.5 * SAMPLE_RATE, abs=SAMPLE_RATE * 0.01)
    assert 0.2 < float(np.abs(samples).max()) <= 1.0


@needs_av
def test_load_audio_from_bytes_of_a_media_source():
    src = MediaSource(id="clip", modality="audio", data=_wav_bytes(_tone(0.5)))
    samples, duration = load_audio(src)
    assert duration == pytest.approx(0.5, abs=0.01)
    assert samples.size > 0


@needs_av
def test_missing_file_names_source_and_path(tmp_path: Path):
    src = MediaSource(id="rec7", modality="audio", path=str(tmp_path / "nope.wav"))
    with pytest.raises(MediaError, match=r"audio source 'rec7' \('.*nope\.wav'\): file not found"):
        load_audio(src)


@needs_av
def test_truncated_wav_is_refused_with_both_lengths(tmp_path: Path):
    data = _wav_bytes(_tone(2.0))
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 4])
    with pytest.raises(MediaError, match=r"cut\.wav'.*truncated: its WAV header declares 2\.00 s .* only 0\.(49|50) s"):
        load_audio(path)


@needs_av
def test_wav_cut_inside_its_header_is_corrupt(tmp_path: Path):
    path = tmp_path / "stub.wav"
    path.write_bytes(_wav_bytes(_tone(1.0))[:30])
    with pytest.raises(MediaError, match=r"stub\.wav' is not a readable audio file"):
        load_audio(path)


@needs_av
def test_garbage_bytes_are_not_audio():
    src = MediaSource(id="junk", modality="audio", data=b"this is not audio at all " * 40)
    with pytest.raises(MediaError, match=r"audio source 'junk' \(1000 bytes\) is not a readable audio file"):
        load_audio(src)


@needs_av
def test_zero_length_wav(tmp_path: Path):
    path = tmp_path / "empty.wav"
    path.write_bytes(_wav_bytes(np.zeros(0)))
    with pytest.raises(MediaError, match="holds no audio samples"):
        load_audio(path)


@needs_av
def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match=r"is empty \(0 bytes\)"):
        load_audio(path)


@needs_av
def test_an_image_is_not_audio(tmp_path: Path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(MediaError, match=r"pic\.png"):
        load_audio(path)


# ----------------------------------------------------------------------------------- images


def test_load_image_is_rgb_and_keeps_small_images(tmp_path: Path):
    path = tmp_path / "p.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert img.info["original_size"] == (40, 30)


def test_huge_image_is_downscaled_to_the_side_cap(tmp_path: Path):
    path = tmp_path / "wide.png"
    Image.new("L", (MAX_IMAGE_SIDE + 904, 100)).save(path)
    img = load_image(path)
    assert max(img.size) == MAX_IMAGE_SIDE
    assert abs(img.size[1] - 100 * MAX_IMAGE_SIDE / (MAX_IMAGE_SIDE + 904)) <= 1  # aspect kept
    assert img.info["original_size"] == (MAX_IMAGE_SIDE + 904, 100)
    assert max(load_image(path, max_side=512).size) == 512


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (a decompression bomb's shape)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    src = MediaSource(id="bomb", modality="image", data=_png_declaring(side, side))
    with pytest.raises(MediaError, match=r"image source 'bomb' .* declares \d+x\d+ = \d+ MP, over the 64 MP limit"):
        load_image(src)


@pytest.mark.parametrize(
    ("name", "payload"),
    [("notes.txt", b"plain text, not pixels\n" * 10), ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")],
)
def test_unsupported_image_format(tmp_path: Path, name: str, payload: bytes):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(MediaError, match=rf"{name}' is not an image in a format Pillow reads"):
        load_image(path)


def test_truncated_image(tmp_path: Path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    path = tmp_path / "half.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MediaError, match=r"half\.png' is truncated or corrupt"):
        load_image(path)


def test_missing_image(tmp_path: Path):
    with pytest.raises(MediaError, match="file not found"):
        load_image(MediaSource(id="img", modality="image", path=str(tmp_path / "x.jpg")))


# ----------------------------------------------------------------------------------- video


def _write_video(path: Path, frames: int = 20, fps: int = 10) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@needs_av
def test_probe_video(tmp_path: Path):
    path = tmp_path / "v.mp4"
    _write_video(path)
    info = probe_video(path)
    assert (info.fps, info.width, info.height, info.has_audio) == (10.0, 64, 48, False)
    assert info.duration_s == pytest.approx(2.0, abs=0.15)
    assert info.frames == 20


@needs_av
def test_probe_video_errors(tmp_path: Path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(_wav_bytes(_tone(0.3)))
    with pytest.raises(MediaError, match=r"a\.wav' holds no video stream"):
        probe_video(wav)
    with pytest.raises(MediaError, match=r"video source 'v' \(40 bytes\) is not a readable video"):
        probe_video(MediaSource(id="v", modality="video", data=b"\x00garbage" * 5))
    with pytest.raises(MediaError, match="file not found"):
        probe_video(tmp_path / "none.mp4")


# ----------------------------------------------------------------------------------- tools


@pytest.mark.parametrize(
    ("tool", "package"), [("espeak-ng", "espeak-ng"), ("ffmpeg", "ffmpeg"), ("tesseract", "tesseract-ocr")]
)
def test_missing_tool_gives_the_install_command(monkeypatch, tool: str, package: str):
    monkeypatch.setattr("omnitrace_core.media.loading.shutil.which", lambda name: None)
    with pytest.raises(MissingToolError, match=rf"'{tool}' is not installed .* sudo apt-get install -y {package}$"):
        require_tool(tool)


def test_present_tool_returns_its_path(monkeypatch):
    monkeypatch.setattr("omnitrace_core.media.loading.shutil.which", lambda name: f"/usr/bin/{name}")
    assert require_tool("ffmpeg") == "/usr/bin/ffmpeg"
