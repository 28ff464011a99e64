"""Media source units and their exact prompt positions.

The processor expands each medium into a run of pad tokens; these functions cut that run into
the units citations point at:

- an image into a grid of regions (default up to 3 x 3) over its merged-token grid, each
  carrying its pixel box in the *original* image (the processor resized it; boxes scale back);
- audio into one-second bins (Qwen2.5-Omni: 25 tokens per second, the last bin shorter) or
  into the caller's segments, each carrying its seconds;
- video into one unit per temporal token group (2 fps, temporal patch 2: one second each).

A region's tokens are not contiguous in the prompt (one stretch per merged row), so units
carry their explicit positions when :class:`~omnitrace_core.sources.SourceUnit` supports
``token_positions``; without it, regions taller than one token row fall back to full-width
row bands, which are contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.log import get_logger
from omnitrace_core.media.omni.specs import ModalitySpec
from omnitrace_core.sources import MediaSource, SourceUnit, TimedSegment

logger = get_logger()

SCATTERED_UNITS = "token_positions" in SourceUnit.model_fields
"""Whether a unit may own non-contiguous prompt positions (``SourceUnit.token_positions``)."""


def make_unit(
    src: MediaSource,
    index: int,
    positions: Sequence[int],
    modality: str,
    *,
    text: str = "",
    seconds: tuple[float, float] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> SourceUnit:
    """A unit of ``src`` owning exactly ``positions`` (sorted prompt indices).

    Raises:
        InvalidInputError: if the positions are scattered and units cannot carry them.
    """
    ordered = sorted(positions)
    start, end = ordered[0], ordered[-1] + 1
    fields: dict[str, object] = {}
    if end - start != len(ordered):
        if not SCATTERED_UNITS:
            raise InvalidInputError(
                f"unit {index} of source {src.id!r} spans non-contiguous prompt tokens, which needs "
                "SourceUnit.token_positions (this core version has none)"
            )
        fields["token_positions"] = tuple(ordered)
    return SourceUnit(
        unit_id=f"{src.id}#{index}",
        source_id=src.id,
        index=index,
        text=text,
        char_start=0,
        char_end=0,
        token_start=start,
        token_end=end,
        modality=modality,
        seconds=seconds,
        box=box,
        **fields,
    )


def split_even(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``min(parts, n)`` near-equal consecutive ranges (larger ones first)."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def image_region_units(
    src: MediaSource,
    positions: Sequence[int],
    grid_thw: Sequence[int],
    image_size: tuple[int, int],
    spec: ModalitySpec,
    regions: tuple[int, int] = (3, 3),
    first_index: int = 0,
) -> list[SourceUnit]:
    """One unit per region of the merged-token grid, boxed in original-image pixels.

    Args:
        src: The image source.
        positions: Prompt positions of the image's pad tokens, in order (row-major over the
            merged grid: ``grid_h / merge`` rows of ``grid_w / merge`` tokens).
        grid_thw: The processor's ``image_grid_thw`` row for this image (in patches).
        image_size: Original ``(width, height)`` in pixels.
        spec: The family (merge size).
        regions: Region rows x columns (fewer when the grid is smaller).
        first_index: Index of the first unit.

    Raises:
        InvalidInputError: if the token count does not match the grid.
    """
    rows, cols = int(grid_thw[1]) // spec.merge_size, int(grid_thw[2]) // spec.merge_size
    t = int(grid_thw[0])
    if t * rows * cols != len(positions):
        raise InvalidInputError(
            f"image source {src.id!r}: {len(positions)} prompt tokens for a {t}x{rows}x{cols} token grid"
        )
    region_rows, region_cols = regions
    if not SCATTERED_UNITS and rows > region_rows:
        region_cols = 1  # bands of several rows: only full-width ones are contiguous
    width, height = image_size
    units: list[SourceUnit] = []
    for r0, r1 in split_even(rows, region_rows):
        for c0, c1 in split_even(cols, region_cols):
            owned = [
                positions[(f * rows + r) * cols + c]
                for f in range(t)
                for r in range(r0, r1)
                for c in range(c0, c1)
            ]
            box = (
                round(c0 * width / cols),
                round(r0 * height / rows),
                round(c1 * width / cols),
                round(r1 * height / rows),
            )
            units.append(make_unit(src, first_index + len(units), owned, "image", box=box))
    return units


def time_bin_units(
    src: MediaSource,
    positions: Sequence[int],
    tokens_per_second: float,
    duration: float,
    segments: Sequence[TimedSegment] | None = None,
    bin_seconds: float = 1.0,
    first_index: int = 0,
    modality: str = "audio",
) -> list[SourceUnit]:
    """Audio tokens grouped into fixed bins, or into the caller's segments, with seconds.

    Token ``k`` covers ``[k, k + 1) / tokens_per_second`` seconds. Bins: ``[b, b + 1)``
    seconds, the last one ending at ``duration``. Segments: each owns the tokens whose middle
    falls inside it (the nearest token when it is shorter than one token); tokens already
    claimed by an earlier segment stay with it.

    Raises:
        InvalidInputError: if a segment starts past the end of the encoded audio.
    """
    n = len(positions)
    # The encoder's strides drop a partial last token: the sound lasts up to one token longer
    # than its tokens. Longer still means the feature extractor cut it (30 s for Whisper's).
    covered = n / tokens_per_second
    encoded = duration if 0 < duration <= covered + 1.0 / tokens_per_second else covered
    if segments:
        return _segment_units(src, positions, tokens_per_second, encoded, segments, first_index, modality)
    per_bin = tokens_per_second * bin_seconds
    units: list[SourceUnit] = []
    for b in range(math.ceil(n / per_bin - 1e-9)):
        lo, hi = round(b * per_bin), min(n, round((b + 1) * per_bin))
        if hi <= lo:
            continue
        seconds = (b * bin_seconds, min((b + 1) * bin_seconds, encoded))
        units.append(
            make_unit(src, first_index + len(units), positions[lo:hi], modality, seconds=_rounded(seconds))
        )
    return units


def _segment_units(
    src: MediaSource,
    positions: Sequence[int],
    tokens_per_second: float,
    encoded: float,
    segments: Sequence[TimedSegment],
    first_index: int,
    modality: str,
) -> list[SourceUnit]:
    n = len(positions)
    claimed = [False] * n
    units: list[SourceUnit] = []
    for k, seg in enumerate(segments):
        if seg.start_s >= encoded:
            raise InvalidInputError(
                f"segment #{k} ({seg.start_s}-{seg.end_s} s) of {src.modality} source {src.id!r} starts "
                f"past the end of its encoded audio ({encoded:.2f} s)"
            )
        mine = [i for i in range(n) if seg.start_s <= (i + 0.5) / tokens_per_second < seg.end_s]
        if not mine:
            mine = [min(n - 1, int(seg.start_s * tokens_per_second))]
        mine = [i for i in mine if not claimed[i]]
        if not mine:
            logger.warning("segment_without_tokens", source=src.id, segment=k)
            continue
        for i in mine:
            claimed[i] = True
        seconds = (seg.start_s, min(seg.end_s, encoded))
        units.append(
            make_unit(
                src,
                first_index + len(units),
                [positions[i] for i in mine],
                modality,
                text=seg.text or "",
                seconds=_rounded(seconds),
            )
        )
    return units


def video_group_units(
    src: MediaSource,
    positions: Sequence[int],
    grid_thw: Sequence[int],
    duration: float,
    spec: ModalitySpec,
    first_index: int = 0,
) -> list[SourceUnit]:
    """One unit per temporal token group of a video, with its seconds.

    Raises:
        InvalidInputError: if the token count does not match the grid.
    """
    groups = int(grid_thw[0])
    per_group = int(grid_thw[1]) * int(grid_thw[2]) // spec.merge_size**2
    if groups * per_group != len(positions):
        raise InvalidInputError(
            f"video source {src.id!r}: {len(positions)} prompt tokens for {groups} groups of {per_group}"
        )
    step = spec.seconds_per_video_group
    units: list[SourceUnit] = []
    for g in range(groups):
        seconds = (g * step, min((g + 1) * step, duration) if duration > g * step else (g + 1) * step)
        owned = positions[g * per_group : (g + 1) * per_group]
        units.append(make_unit(src, first_index + len(units), owned, "video", seconds=_rounded(seconds)))
    return units


def _rounded(seconds: tuple[float, float]) -> tuple[float, float]:
    return (round(seconds[0], 3), round(seconds[1], 3))
