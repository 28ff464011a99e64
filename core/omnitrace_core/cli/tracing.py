"""The tracing room's commands: ``omnitrace demo`` and ``omnitrace run`` (answer with citations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from omnitrace_core.config import MappingConfig
from omnitrace_core.errors import InvalidInputError, OmniTraceError
from omnitrace_core.models import DEFAULT_MODEL
from omnitrace_core.results import Citation, TracedAnswer
from omnitrace_core.sources import MediaSource, Source, TextSource

app = typer.Typer()
console = Console()
err = Console(stderr=True, soft_wrap=True)

_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta"]

DEMO_SOURCES = [
    TextSource(
        id="harbor",
        title="Port Veltra harbor",
        text="Port Veltra's harbor was dredged in 1911 so that steamships could dock. "
        "Today it handles mostly ferries to the Osk islands.",
    ),
    TextSource(
        id="lighthouse",
        title="Veltra lighthouse",
        text="The Veltra lighthouse stands 42 metres tall on Gannet Point. "
        "Its keeper, Ilse Marrow, lit the lamp every night for thirty years.",
    ),
    TextSource(
        id="market",
        title="Fish market",
        text="The fish market of Port Veltra opens at five in the morning. "
        "Herring and cod are sold there by auction.",
    ),
]
DEMO_QUESTION = "How tall is the Veltra lighthouse and who was its keeper?"


def make_tracer(
    model: str,
    signal: str | None = None,
    correction: str | None = None,
    threads: int | None = None,
    asr: bool = False,
    rerank: bool = False,
    calibrated: bool = True,
) -> Any:
    """Load ``model`` with its own defaults (its calibration, if any) plus the options given."""
    import torch

    from omnitrace_core.rerank import RerankConfig
    from omnitrace_core.tracer import Tracer

    if threads:
        torch.set_num_threads(threads)
    tracer = Tracer.from_pretrained(model, calibration="auto" if calibrated else None)
    base = tracer.config
    update: dict[str, Any] = {"audio_fallback": "asr" if asr else "error"}
    if signal:
        update["signal"] = signal
    if correction:
        try:
            update["mapping"] = MappingConfig.model_validate(
                {**base.mapping.model_dump(), "bias_correction": correction}
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"--correction {correction!r}: choose none, prompt, running or both"
            ) from exc
    if rerank:
        update["rerank"] = RerankConfig()
    config = base.model_copy(update=update)
    tracer.signal_for(config.signal)  # an unknown name fails here, named
    tracer.config = config
    return tracer


def _where(c: Citation) -> str:
    """A citation's location: seconds for audio / video, boxes for images."""
    if c.seconds:
        return " " + ",".join(f"{a:.1f}-{b:.1f}s" for a, b in c.seconds)
    if c.boxes:
        return " " + ",".join(f"({x0},{y0},{x1},{y1})" for x0, y0, x1, y1 in c.boxes)
    return ""


def _media_sources(images: list[Path], audio: list[Path], video: list[Path]) -> list[MediaSource]:
    """``--image / --audio / --video`` files as sources, ids from the file names (made unique)."""
    out: list[MediaSource] = []
    seen: set[str] = set()
    for modality, paths in (("image", images), ("audio", audio), ("video", video)):
        for path in paths:
            if not path.is_file():
                raise InvalidInputError(f"--{modality} {path}: no such file")
            sid, n = path.stem, 1
            while sid in seen:
                n += 1
                sid = f"{path.stem}-{n}"
            seen.add(sid)
            out.append(MediaSource(id=sid, modality=modality, path=str(path), title=path.name))
    return out


def render(answer: TracedAnswer, out: Console = console) -> None:
    """Print the answer, each sentence coloured by its first cited source, and a sources table."""
    colour = {s.id: _COLORS[i % len(_COLORS)] for i, s in enumerate(answer.sources)}
    body = Text()
    for s in answer.sentences:
        style = colour.get(s.citations[0].source_id, "white") if s.citations else "dim"
        body.append(s.text, style=style)
        marks = ", ".join(c.source_id + _where(c) for c in s.citations) or "unsupported"
        body.append(f" [{marks}]", style="bold " + style)
        body.append("\n")
    out.print(body)
    table = Table(title="Sources")
    table.add_column("id")
    table.add_column("title")
    table.add_column("cited by sentences")
    for src in answer.sources:
        cited = [
            f"{s.index}({c.score:.2f})"
            for s in answer.sentences
            for c in s.citations
            if c.source_id == src.id
        ]
        table.add_row(Text(src.id, style=colour[src.id]), src.title or "", ", ".join(cited) or "-")
    out.print(table)
    for e in answer.errors:
        out.print(f"[yellow]warning:[/yellow] {e}")


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Packaged model name or local folder")] = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option()] = 64,
) -> None:
    """Answer a bundled question over bundled sources and show each sentence's citations."""
    try:
        tracer = make_tracer(model)
        console.print(f"[bold]Question:[/bold] {DEMO_QUESTION}\n")
        answer = tracer.generate(DEMO_SOURCES, DEMO_QUESTION, max_new_tokens=max_new_tokens)
    except OmniTraceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    render(answer)


def _load_sources(path: Path) -> list[Source]:
    """A JSON list (or ``{"sources": [...]}``) or JSONL of sources; errors name file and line."""
    try:
        raw = path.read_bytes().decode("utf-8").removeprefix("\ufeff")  # a BOM is not content
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not raw.strip():
        raise InvalidInputError(f"{path}: the file is empty (expected a JSON list or JSONL of sources)")
    stripped = raw.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and "\n{" not in stripped.rstrip()):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        if isinstance(data, dict) and "sources" in data:
            data = data["sources"]
        items = data if isinstance(data, list) else [data]
    else:  # JSONL: one source per line; lines end at \n only (U+2028 may sit inside a string)
        items = []
        for number, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(
                    f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
    from omnitrace_core.sources import validate_sources

    try:
        return validate_sources(items)  # drops unknown fields, rejects non-text modalities by name
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}") from exc


@app.command()
def run(
    question: Annotated[str, typer.Option()],
    sources: Annotated[
        Path | None, typer.Option(help="JSON list / JSONL of {id, text, title?, url?}")
    ] = None,
    image: Annotated[list[Path] | None, typer.Option(help="An image file as a source (repeatable)")] = None,
    audio: Annotated[list[Path] | None, typer.Option(help="An audio file as a source (repeatable)")] = None,
    video: Annotated[list[Path] | None, typer.Option(help="A video file as a source (repeatable)")] = None,
    asr: Annotated[bool, typer.Option("--asr", help="Transcribe audio offline for a text model")] = False,
    model: Annotated[str, typer.Option()] = DEFAULT_MODEL,
    signal: Annotated[
        str | None, typer.Option(help="Signal (default: the model's: learned where calibrated, else attmean)")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON")] = False,
) -> None:
    """Answer a question over your sources (text, image, audio, video) with per-sentence citations."""
    try:
        srcs: list[Source] = _load_sources(sources) if sources else []
        srcs += _media_sources(image or [], audio or [], video or [])
        if not srcs:
            raise InvalidInputError("no sources: give --sources FILE and/or --image / --audio / --video")
        tracer = make_tracer(model, signal, asr=asr)
        answer = tracer.generate(srcs, question, max_new_tokens=max_new_tokens)
    except OmniTraceError as exc:
        err.print(f"[red]error:[/red] {' '.join(str(exc).split())}")
        raise typer.Exit(2) from exc
    if as_json:
        print(answer.model_dump_json(indent=1))
    else:
        render(answer)
