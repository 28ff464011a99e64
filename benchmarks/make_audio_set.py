"""Build ``benchmarks/data/audio/``: scripted speech recordings and an audio QA set over them.

Why synthetic speech: a benchmark for *where in a recording* an answer comes from needs the
seconds of every sentence known exactly. Each recording here is a script of sentences about
invented entities (so a model cannot answer from memory), spoken one sentence at a time by
``espeak-ng -v en-us -s 150``, resampled to 16 kHz mono, trimmed to the speech and joined with
fixed silences using Python's ``wave`` module. A sentence's start and end are then sample
counts divided by 16000, exact by construction; they are the ``gold_spans`` of the rows whose
answer that sentence holds.

Rows (``audio_dev.jsonl``, the shared benchmark format of ``../shared/bench/README.md``):
``qa_single`` and ``qa_multi`` questions over 2-4 sources, some recordings
(``"modality": "audio"``, ``"path"`` relative to the jsonl) and some text passages of the same
shape (distractors, or the second gold source of a multi-source question). Recordings carry
neutral titles ("Recording: ..."): a source's title belongs to its first unit, and an
informative title would pull citations to the first spoken sentence. ``keys`` of a recording
are the names and values as the packaged whisper tiny.en writes them (``--verify`` checks this);
no key is shared by two sources of a row. 18 rows: 10 ``qa_single`` whose answer is spoken,
2 ``qa_single`` whose answer is written (a recording as distractor), 6 ``qa_multi`` (recording
plus passage, two recordings, or two sentences of one recording).

``audio_forced.jsonl`` holds each row's ``teacher_forced`` twin: a correct answer with gold
sources per sentence, to attribute instead of generating. The small default model often
answers these questions wrongly, and its citations then follow what it did say; the forced
twin measures where a correct answer's attribution lands in the recording.

Deterministic: the resampler is integer arithmetic (a windowed-sinc filter quantised to
15-bit integer taps, exact int64 sums), so for a given espeak-ng version the wavs are
byte-identical on every machine; ``--check`` regenerates into a temporary folder and compares
every file byte for byte (``recordings.json`` records the espeak-ng version and each file's
sha256).

Usage::

    python benchmarks/make_audio_set.py            # (re)write benchmarks/data/audio/
    python benchmarks/make_audio_set.py --check    # regenerate elsewhere, compare bytes
    python benchmarks/make_audio_set.py --verify   # also transcribe each recording, check keys
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnitrace_core.media.loading import require_tool

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "data" / "audio"
RATE = 16_000
ESPEAK_RATE = 22_050  # espeak-ng always writes 22.05 kHz
VOICE, SPEED = "en-us", 150
LEAD_S, GAP_S, TAIL_S = 0.5, 0.8, 0.5
TRIM_THRESHOLD = 300  # |sample| below this at a clip's ends is espeak's padding, not speech
SPEECH_PAD_S = 0.03  # kept around the trimmed speech so no consonant is clipped


@dataclass(frozen=True)
class Recording:
    """A scripted recording: neutral title, sentences in order, and its facts' keys.

    ``facts``: per fact, its spellings (``("300", "three hundred")``): whisper writes a spoken
    number either way, and a model may copy either; all spellings become keys, and
    ``--verify`` checks that whisper writes at least one of them.
    """

    name: str
    title: str
    sentences: tuple[str, ...]
    facts: tuple[tuple[str, ...], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for spellings in self.facts for k in spellings)


@dataclass(frozen=True)
class Passage:
    """A text source."""

    name: str
    title: str
    text: str
    keys: tuple[str, ...]


RECORDINGS = [
    Recording(
        "bridge", "Recording: council voicemail",
        ("Hello, this is the town council.",
         "The Willow Creek bridge opened in 1987.",
         "It is 412 metres long and carries the northern railway.",
         "The bridge was designed by Laura Fenwick.",
         "Repairs will begin next March."),
        (("Willow Creek",), ("1987",), ("412",), ("Laura Fenwick",), ("northern railway",)),
    ),
    Recording(
        "museum", "Recording: local radio news",
        ("Good evening, here is the local news.",
         "The Pelican Bay museum holds 300 old sea charts.",
         "Its director is Oscar Bellamy.",
         "The museum was founded in 1962.",
         "It is closed on Mondays."),
        (("Pelican Bay",), ("300", "three hundred"), ("Oscar Bellamy",), ("1962",)),
    ),
    Recording(
        "orchard", "Recording: gardening programme",
        ("Welcome back to the garden hour.",
         "The Hilltop orchard grows 60 kinds of apples.",
         "It was planted in 1925 by Martha Quinlan.",
         "Every autumn the orchard sells apple juice to the village.",
         "Today it is run by her grandson Felix."),
        (("Hilltop",), ("60", "sixty"), ("1925",), ("Martha Quinlan",), ("Felix",)),
    ),
    Recording(
        "ferry", "Recording: harbour announcement",
        ("Good morning, this is the harbour office.",
         "The ferry to Fox Island leaves every morning.",
         "The crossing takes 50 minutes.",
         "The ship is called the Silver Swan.",
         "Tickets cost 12 dollars."),
        (("Fox Island",), ("50 minutes", "fifty minutes"), ("Silver Swan",), ("$12", "12 dollars")),
    ),
    Recording(
        "lab", "Recording: staff meeting",
        ("Thanks everyone for joining the meeting.",
         "The Redwood lab will move to Dunmore in June.",
         "The move will cost 2 million dollars.",
         "Irene Callaway will lead the new building.",
         "The old building will become a library."),
        (("Redwood",), ("Dunmore",), ("2 million", "two million"), ("Irene Callaway",), ("library",)),
    ),
]

PASSAGES = [
    Passage("tunnel", "Ferrow Hill tunnel",
            "The Ferrow Hill tunnel opened in 1994. It is 860 metres long and carries the coastal road. "
            "The tunnel was designed by Petra Lindgren.",
            ("Ferrow Hill", "1994", "860", "Petra Lindgren", "coastal road")),
    Passage("gallery", "Amberline gallery",
            "The Amberline gallery holds 1200 paintings of ships. Its director is Clara Whitby. "
            "The gallery was founded in 1978.",
            ("Amberline", "1200", "Clara Whitby", "1978")),
    Passage("vineyard", "Redfern vineyard",
            "The Redfern vineyard grows 15 kinds of grapes. It was planted in 1948 by Samuel Oakes. "
            "It sells its wine in three towns.",
            ("Redfern", "15 kinds", "1948", "Samuel Oakes")),
    Passage("bus", "Corran Point night bus",
            "The night bus to Corran Point leaves at 11 in the evening. The trip takes 90 minutes. "
            "Tickets cost 8 dollars.",
            ("Corran Point", "90 minutes", "8 dollars")),
    Passage("observatory", "Northgate observatory",
            "The Northgate observatory opened in 2003. Its telescope was built by Ada Renwick. "
            "It is open to visitors on Fridays.",
            ("Northgate", "2003", "Ada Renwick")),
    Passage("fair", "Harvest lantern fair",
            "The Harvest lantern fair starts on the 3rd of October. Forty stalls sell paper lanterns. "
            "The fair is held in Amsel Square.",
            ("lantern fair", "October", "Amsel Square")),
]

# (row id, task, source names in prompt order, question, gold source names,
#  answer, {recording name: [indices of the sentences holding the answer]})
ROWS: list[tuple[str, str, tuple[str, ...], str, tuple[str, ...], str, dict[str, list[int]]]] = [
    ("audio-qa1-0", "qa_single", ("tunnel", "bridge"), "When did the Willow Creek bridge open?",
     ("bridge",), "1987", {"bridge": [1]}),
    ("audio-qa1-1", "qa_single", ("bridge", "tunnel", "observatory"), "Who designed the Willow Creek bridge?",
     ("bridge",), "Laura Fenwick", {"bridge": [3]}),
    ("audio-qa1-2", "qa_single", ("gallery", "museum"), "How many sea charts does the Pelican Bay museum hold?",
     ("museum",), "300", {"museum": [1]}),
    ("audio-qa1-3", "qa_single", ("museum", "gallery", "ferry"), "Who is the director of the Pelican Bay museum?",
     ("museum",), "Oscar Bellamy", {"museum": [2]}),
    ("audio-qa1-4", "qa_single", ("vineyard", "orchard"), "Who planted the Hilltop orchard?",
     ("orchard",), "Martha Quinlan", {"orchard": [2]}),
    ("audio-qa1-5", "qa_single", ("bus", "ferry", "tunnel"), "How long does the crossing to Fox Island take?",
     ("ferry",), "50 minutes", {"ferry": [2]}),
    ("audio-qa1-6", "qa_single", ("ferry", "lab"), "What is the name of the ship that sails to Fox Island?",
     ("ferry",), "Silver Swan", {"ferry": [3]}),
    ("audio-qa1-7", "qa_single", ("observatory", "lab"), "How much will the move of the Redwood lab cost?",
     ("lab",), "2 million dollars", {"lab": [2]}),
    ("audio-qa1-8", "qa_single", ("fair", "lab", "museum"), "Who will lead the new building of the Redwood lab?",
     ("lab",), "Irene Callaway", {"lab": [3]}),
    ("audio-qa1-9", "qa_single", ("orchard", "fair", "gallery"),
     "How many kinds of apples does the Hilltop orchard grow?", ("orchard",), "60", {"orchard": [1]}),
    ("audio-qa1-10", "qa_single", ("bridge", "tunnel"), "When did the Ferrow Hill tunnel open?",
     ("tunnel",), "1994", {}),
    ("audio-qa1-11", "qa_single", ("museum", "gallery"), "Who is the director of the Amberline gallery?",
     ("gallery",), "Clara Whitby", {}),
    ("audio-qa2-0", "qa_multi", ("bridge", "tunnel"),
     "How long are the Willow Creek bridge and the Ferrow Hill tunnel?",
     ("bridge", "tunnel"), "412 metres; 860 metres", {"bridge": [2]}),
    ("audio-qa2-1", "qa_multi", ("observatory", "bridge", "vineyard"),
     "Who designed the Willow Creek bridge, and who built the telescope of the Northgate observatory?",
     ("bridge", "observatory"), "Laura Fenwick; Ada Renwick", {"bridge": [3]}),
    ("audio-qa2-2", "qa_multi", ("ferry", "bus"),
     "How long does the crossing to Fox Island take, and how long is the night bus trip to Corran Point?",
     ("ferry", "bus"), "50 minutes; 90 minutes", {"ferry": [2]}),
    ("audio-qa2-3", "qa_multi", ("museum", "orchard", "gallery"),
     "When was the Pelican Bay museum founded, and when was the Hilltop orchard planted?",
     ("museum", "orchard"), "1962; 1925", {"museum": [3], "orchard": [2]}),
    ("audio-qa2-4", "qa_multi", ("lab", "museum"),
     "Who will lead the new building of the Redwood lab, and who is the director of the Pelican Bay museum?",
     ("lab", "museum"), "Irene Callaway; Oscar Bellamy", {"lab": [3], "museum": [2]}),
    ("audio-qa2-5", "qa_multi", ("bridge", "tunnel"), "When did the Willow Creek bridge open, and who designed it?",
     ("bridge",), "1987; Laura Fenwick", {"bridge": [1, 3]}),
]


# A correct answer per row, sentence by sentence with its gold sources: the teacher-forced
# twin of each row (``audio_forced.jsonl``) attributes this answer instead of generating one,
# so the time scores there measure attribution alone, not the small model's answer quality.
RESPONSES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "audio-qa1-0": [("The Willow Creek bridge opened in 1987.", ("bridge",))],
    "audio-qa1-1": [("The Willow Creek bridge was designed by Laura Fenwick.", ("bridge",))],
    "audio-qa1-2": [("The Pelican Bay museum holds 300 old sea charts.", ("museum",))],
    "audio-qa1-3": [("The director of the Pelican Bay museum is Oscar Bellamy.", ("museum",))],
    "audio-qa1-4": [("The Hilltop orchard was planted by Martha Quinlan.", ("orchard",))],
    "audio-qa1-5": [("The crossing to Fox Island takes 50 minutes.", ("ferry",))],
    "audio-qa1-6": [("The ship that sails to Fox Island is called the Silver Swan.", ("ferry",))],
    "audio-qa1-7": [("The move of the Redwood lab will cost 2 million dollars.", ("lab",))],
    "audio-qa1-8": [("Irene Callaway will lead the new building of the Redwood lab.", ("lab",))],
    "audio-qa1-9": [("The Hilltop orchard grows 60 kinds of apples.", ("orchard",))],
    "audio-qa1-10": [("The Ferrow Hill tunnel opened in 1994.", ("tunnel",))],
    "audio-qa1-11": [("The director of the Amberline gallery is Clara Whitby.", ("gallery",))],
    "audio-qa2-0": [("The Willow Creek bridge is 412 metres long.", ("bridge",)),
                    ("The Ferrow Hill tunnel is 860 metres long.", ("tunnel",))],
    "audio-qa2-1": [("The Willow Creek bridge was designed by Laura Fenwick.", ("bridge",)),
                    ("The telescope of the Northgate observatory was built by Ada Renwick.", ("observatory",))],
    "audio-qa2-2": [("The crossing to Fox Island takes 50 minutes.", ("ferry",)),
                    ("The night bus trip to Corran Point takes 90 minutes.", ("bus",))],
    "audio-qa2-3": [("The Pelican Bay museum was founded in 1962.", ("museum",)),
                    ("The Hilltop orchard was planted in 1925.", ("orchard",))],
    "audio-qa2-4": [("Irene Callaway will lead the new building of the Redwood lab.", ("lab",)),
                    ("The director of the Pelican Bay museum is Oscar Bellamy.", ("museum",))],
    "audio-qa2-5": [("The Willow Creek bridge opened in 1987.", ("bridge",)),
                    ("It was designed by Laura Fenwick.", ("bridge",))],
}


# ------------------------------------------------------------------ audio synthesis

def espeak_version(espeak: str) -> str:
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("Data at:")[0].strip()


def speak(espeak: str, text: str, workdir: Path) -> np.ndarray:
    """One sentence as 22.05 kHz int16 samples from espeak-ng."""
    out = workdir / "sentence.wav"
    subprocess.run([espeak, "-v", VOICE, "-s", str(SPEED), "-w", str(out), text], check=True,
                   capture_output=True)
    with wave.open(str(out), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (ESPEAK_RATE, 1, 2):
            raise RuntimeError(f"espeak-ng wrote {w.getframerate()} Hz x{w.getnchannels()}, expected 22050 Hz mono")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int64)


def _taps(half: int = 24, phases: int = 320, step: int = 441, scale_bits: int = 15) -> np.ndarray:
    """Integer windowed-sinc taps, one row per output phase (16000/22050 = 320/441).

    Low-pass at 7.2 kHz (under the 8 kHz output Nyquist), Blackman window, each phase's taps
    normalised to unit gain before rounding to integers.
    """
    cutoff = 7200 / ESPEAK_RATE
    offsets = np.arange(-half + 1, half + 1)
    rows = []
    for p in range(phases):
        frac = (p * step % phases) / phases
        t = offsets - frac
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * (0.42 + 0.5 * np.cos(np.pi * t / half) + 0.08 * np.cos(2 * np.pi * t / half))
        rows.append(np.round(h / h.sum() * (1 << scale_bits)).astype(np.int64))
    return np.stack(rows)


_TAPS = _taps()


def resample(x: np.ndarray) -> np.ndarray:
    """22.05 kHz -> 16 kHz int16, exact integer arithmetic (byte-identical everywhere)."""
    half = _TAPS.shape[1] // 2
    n_out = len(x) * 320 // 441
    n = np.arange(n_out, dtype=np.int64)
    base = n * 441 // 320  # input index at or before the output instant
    phase = n % 320
    padded = np.concatenate([np.zeros(half, np.int64), x, np.zeros(half + 1, np.int64)])
    idx = base[:, None] + np.arange(-half + 1, half + 1)[None, :] + half
    acc = (padded[idx] * _TAPS[phase]).sum(axis=1)
    y = (acc + (1 << 14)) >> 15
    return np.clip(y, -32768, 32767).astype("<i2")


def trim(x: np.ndarray) -> np.ndarray:
    """The speech of a clip: espeak's leading / trailing near-silence cut, a short pad kept."""
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > TRIM_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError("espeak-ng produced a silent clip")
    pad = round(SPEECH_PAD_S * RATE)
    return x[max(0, loud[0] - pad): loud[-1] + 1 + pad]


def build_recording(espeak: str, rec: Recording, out: Path, workdir: Path) -> list[dict[str, Any]]:
    """Write ``out`` (16 kHz mono wav); return each sentence with its exact seconds."""
    pieces = [np.zeros(round(LEAD_S * RATE), "<i2")]
    cursor = len(pieces[0])
    timed = []
    for k, sentence in enumerate(rec.sentences):
        if k:
            gap = np.zeros(round(GAP_S * RATE), "<i2")
            pieces.append(gap)
            cursor += len(gap)
        speech = trim(resample(speak(espeak, sentence, workdir)))
        timed.append({"index": k, "text": sentence, "start_s": round(cursor / RATE, 4),
                      "end_s": round((cursor + len(speech)) / RATE, 4)})
        pieces.append(speech)
        cursor += len(speech)
    pieces.append(np.zeros(round(TAIL_S * RATE), "<i2"))
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(pieces).tobytes())
    return timed


# ------------------------------------------------------------------ dataset rows

def build_rows(timings: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    recordings = {r.name: r for r in RECORDINGS}
    passages = {p.name: p for p in PASSAGES}
    rows = []
    for row_id, task, names, question, gold, answer, spans in ROWS:
        ids = {name: f"doc{i}" for i, name in enumerate(names, start=1)}
        sources = []
        for name in names:
            if name in recordings:
                rec = recordings[name]
                sources.append({"id": ids[name], "modality": "audio", "title": rec.title,
                                "path": f"{name}.wav", "keys": list(rec.keys)})
            else:
                p = passages[name]
                sources.append({"id": ids[name], "modality": "text", "title": p.title, "text": p.text,
                                "keys": list(p.keys)})
        _check_row(row_id, sources, gold, spans, names)
        row: dict[str, Any] = {"id": row_id, "task": task, "sources": sources,
                               "question": question + " Answer in one sentence.",
                               "gold_sources": [ids[g] for g in gold], "answer": answer}
        if spans:
            row["gold_spans"] = {ids[name]: [[timings[name][k]["start_s"], timings[name][k]["end_s"]] for k in idx]
                                 for name, idx in spans.items()}
        rows.append(row)
    return rows


def forced_twin(row: dict[str, Any]) -> dict[str, Any]:
    """The row as ``teacher_forced``: a correct answer to attribute, gold per sentence."""
    ids = {name: src["id"] for name, src in zip(_row_spec(row["id"])[2], row["sources"], strict=True)}
    response, sentences = "", []
    for text, gold in RESPONSES[row["id"]]:
        start = len(response) + (1 if response else 0)
        response = f"{response} {text}" if response else text
        sentences.append({"text": text, "start": start, "end": len(response),
                          "gold_sources": [ids[g] for g in gold]})
    twin = {**row, "id": row["id"].replace("audio-qa", "audio-tf"), "task": "teacher_forced",
            "response": response, "response_sentences": sentences}
    twin.pop("answer", None)
    return twin


def _row_spec(row_id: str) -> tuple[Any, ...]:
    return next(spec for spec in ROWS if spec[0] == row_id)


def _check_row(row_id: str, sources: list[dict[str, Any]], gold: tuple[str, ...],
               spans: dict[str, list[int]], names: tuple[str, ...]) -> None:
    """Construction rules: gold among the sources, spans only on gold recordings, keys unshared."""
    if not set(gold) <= set(names) or not set(spans) <= set(gold):
        raise ValueError(f"{row_id}: gold {gold} / spans {sorted(spans)} not among its sources {names}")
    seen: dict[str, str] = {}
    for src in sources:
        for key in src["keys"]:
            other = seen.setdefault(key.lower(), src["id"])
            if other != src["id"]:
                raise ValueError(f"{row_id}: key {key!r} is in both {other} and {src['id']}")
    if not any(src["modality"] == "audio" for src in sources):
        raise ValueError(f"{row_id}: no recording among its sources")


# ------------------------------------------------------------------ main

def generate(out_dir: Path) -> dict[str, Any]:
    """Write every recording, ``recordings.json`` and ``audio_dev.jsonl`` into ``out_dir``."""
    espeak = require_tool("espeak-ng")
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[dict[str, Any]]] = {}
    manifest: dict[str, Any] = {"espeak_ng": espeak_version(espeak), "voice": VOICE, "speed": SPEED,
                                "sample_rate": RATE, "recordings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for rec in RECORDINGS:
            path = out_dir / f"{rec.name}.wav"
            timings[rec.name] = build_recording(espeak, rec, path, Path(tmp))
            with wave.open(str(path), "rb") as w:
                duration = w.getnframes() / RATE
            manifest["recordings"][rec.name] = {
                "file": path.name, "title": rec.title, "duration_s": round(duration, 4),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "sentences": timings[rec.name]}
    (out_dir / "recordings.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    rows = build_rows(timings)
    with (out_dir / "audio_dev.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with (out_dir / "audio_forced.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(forced_twin(row)) + "\n")
    return manifest


def check(out_dir: Path) -> int:
    """Regenerate into a temporary folder; report any file that differs from ``out_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        names = sorted(p.name for p in Path(tmp).iterdir())
        bad = [n for n in names if not (out_dir / n).is_file()
               or (out_dir / n).read_bytes() != (Path(tmp) / n).read_bytes()]
    for n in bad:
        print(f"differs: {out_dir / n}", file=sys.stderr)
    print(f"{len(names) - len(bad)}/{len(names)} files byte-identical")
    return 1 if bad else 0


def verify(out_dir: Path) -> int:
    """Transcribe every recording with the packaged tiny.en; check each fact is heard as keyed."""
    from omnitrace_core.media.asr import transcribe

    problems = 0
    for rec in RECORDINGS:
        text = transcribe(out_dir / f"{rec.name}.wav").text
        missing = [f for f in rec.facts if not any(k.lower() in text.lower() for k in f)]
        problems += bool(missing)
        print(f"{rec.name}: {text!r}" + (f"  MISSING {missing}" if missing else ""))
    return 1 if problems else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="regenerate elsewhere and compare bytes")
    ap.add_argument("--verify", action="store_true", help="transcribe the recordings, check the keys")
    a = ap.parse_args()
    if a.check:
        sys.exit(check(a.out))
    manifest = generate(a.out)
    total = sum(r["duration_s"] for r in manifest["recordings"].values())
    print(f"wrote {len(RECORDINGS)} recordings ({total:.1f} s) and {len(ROWS)} rows to {a.out}")
    if a.verify:
        sys.exit(verify(a.out))


if __name__ == "__main__":
    main()
