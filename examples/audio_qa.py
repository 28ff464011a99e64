"""Ask a question over a recording and see *when* in it each answer sentence was said.

The packaged SmolLM2-135M cannot hear, so the recording goes through offline speech
recognition first (faster-whisper with the packaged whisper tiny.en,
``TracerConfig(audio_fallback="asr")``): it becomes a transcript whose units are the spoken
sentences, each with its seconds, and every citation of the recording says where to seek.

By default the staff-meeting recording of the audio benchmark
(``benchmarks/data/audio/lab.wav``) is used; without it a recording is synthesised with
espeak-ng into a temporary folder. Nothing is downloaded; it runs in well under a minute on CPU.

    pip install "omnitrace-integrations[audio]"      # + sudo apt-get install espeak-ng (synthesis only)
    python examples/audio_qa.py
    python examples/audio_qa.py --audio my_call.wav --question "When is the deadline?"
    python examples/audio_qa.py --forced "Irene Callaway will lead the new building."
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "benchmarks" / "data" / "audio" / "lab.wav"
SCRIPT = [
    "Thanks everyone for joining the meeting.",
    "The Redwood lab will move to Dunmore in June.",
    "The move will cost 2 million dollars.",
    "Irene Callaway will lead the new building.",
    "The old building will become a library.",
]
QUESTION = "Where will the Redwood lab move to?"


def synthesise(folder: Path) -> Path:
    """Speak :data:`SCRIPT` with espeak-ng, one sentence per file, joined with 0.8 s pauses."""
    from omnitrace_core.media.loading import require_tool

    espeak = require_tool("espeak-ng")
    frames, params = [], None
    for k, sentence in enumerate(SCRIPT):
        part = folder / f"part{k}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(part), sentence], check=True)
        with wave.open(str(part), "rb") as w:
            params = w.getparams()
            if k:
                frames.append(b"\0\0" * round(0.8 * w.getframerate()))
            frames.append(w.readframes(w.getnframes()))
    out = folder / "meeting.wav"
    assert params is not None
    with wave.open(str(out), "wb") as w:
        w.setparams(params)
        w.writeframes(b"".join(frames))
    return out


def seconds(spans: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in spans)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--audio", type=Path, help="a recording (any format FFmpeg reads)")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--forced", help="attribute this answer instead of generating one")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args(argv)

    from omnitrace_core import TextSource, Tracer, TracerConfig
    from omnitrace_core.errors import OmniTraceError
    from omnitrace_core.media.asr import transcript_source
    from omnitrace_core.sources import MediaSource

    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio or (BUNDLED if BUNDLED.is_file() else synthesise(Path(tmp)))
        recording = MediaSource(
            id="rec1", modality="audio", path=str(audio), title="Recording: staff meeting"
        )
        notes = TextSource(
            id="notes",
            title="Facilities notes",
            text="The Northgate office closes on Fridays. Its heating was replaced in 2019.",
        )
        try:
            transcript = transcript_source(recording)  # cached: the tracer reuses this transcript
            print(f"Transcript of {audio.name} ({transcript.metadata['duration_s']:.1f} s):")
            for seg in transcript.segments or []:
                print(f"  [{seg.start_s:5.1f}-{seg.end_s:5.1f} s] {seg.text}")
            tracer = Tracer.from_default(config=TracerConfig(audio_fallback="asr"))
            sources = [notes, recording]
            if args.forced:
                answer = tracer.attribute(sources, args.question, args.forced)
            else:
                answer = tracer.generate(sources, args.question, max_new_tokens=args.max_new_tokens)
        except OmniTraceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    print(f"\nQuestion: {args.question}\n")
    for s in answer.sentences:
        marks = [
            f"[{c.source_id} {seconds(c.seconds)}]" if c.seconds else f"[{c.source_id}]" for c in s.citations
        ]
        print(f"{s.text.strip()} {' '.join(marks) or '[unsupported]'}")
        for c in s.citations:
            if c.seconds:
                print(f"    {c.source_id} said: {c.cited_text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
