"""Per-model calibration: learned head weights and the defaults chosen with them.

AttMean weighs every layer and head the same, yet most heads do not track where content comes
from. A :class:`Calibration` holds, for one model, a non-negative weight per (layer, head)
learned without labels from the model's own source ablations (``omnitrace calibrate``,
:mod:`omnitrace_core.evaluation.calibrate`), plus the tracer defaults chosen on the same
calibration data (position-bias correction, curation thresholds, grounding thresholds) and a
report of the fit. The ``learned`` signal (:class:`omnitrace_core.signals.LearnedHeads`) reads
the weights: a weighted sum over heads instead of a mean, at AttMean's cost per token.

A calibration is a small JSON file. It names its model and carries a hash of the model's
architecture config; applying it to another model is a :class:`CalibrationMismatchError`
naming both. Calibrations for the packaged models ship in ``omnitrace_core/calibrations/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnitrace_core.config import CurationConfig, GroundingThresholds, MappingConfig, TracerConfig
from omnitrace_core.errors import InvalidInputError, ModelLoadError

FORMAT_VERSION = 1

#: Architecture fields that decide what a (layer, head) index means.
_HASHED_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
)


class CalibrationMismatchError(InvalidInputError):
    """A calibration was made for another model (the message names both)."""


def text_config(model_or_config: Any) -> Any:
    """The decoder's config of a model or config (omni / VL models nest it)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def config_hash(model_or_config: Any) -> str:
    """A short sha256 of the architecture fields that give (layer, head) indices their meaning."""
    cfg = text_config(model_or_config)
    fields = {name: getattr(cfg, name, None) for name in _HASHED_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def head_shape(model_or_config: Any) -> tuple[int, int]:
    """``(layers, query heads)`` of the decoder."""
    cfg = text_config(model_or_config)
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


class Calibration(BaseModel):
    """Learned head weights of one model and the tracer defaults chosen with them.

    Attributes:
        model: Name of the model it was fitted on (reported in errors).
        config_hash: :func:`config_hash` of that model.
        num_layers: Decoder layers.
        num_heads: Query heads per layer.
        head_weights: ``num_layers`` rows of ``num_heads`` non-negative weights summing to 1.
        default_signal: The signal the tracer uses for this model when no config is given
            (``learned`` where it measured better than ``attmean`` on the evaluation sets).
        mapping: Mapping defaults chosen on the calibration data (``None``: the library's).
        curation: Curation defaults chosen on the calibration data (``None``: the library's).
        grounding: Grounding-verdict thresholds chosen on the calibration data.
        fit: How it was made: data, seed, masks, held-out fit against uniform weights, seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    model: str = Field(min_length=1)
    config_hash: str = Field(min_length=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    head_weights: list[list[float]]
    default_signal: str = "learned"
    mapping: MappingConfig | None = None
    curation: CurationConfig | None = None
    grounding: GroundingThresholds | None = None
    fit: dict[str, Any] = Field(default_factory=dict)

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"calibration format {value} is not supported "
                f"(this library reads {FORMAT_VERSION})")
        return value

    @model_validator(mode="after")
    def _weights_fit_the_shape(self) -> Calibration:
        rows = self.head_weights
        if len(rows) != self.num_layers or any(len(r) != self.num_heads for r in rows):
            raise ValueError(
                f"head_weights must be {self.num_layers} rows of {self.num_heads} weights, got "
                f"{len(rows)} rows of {sorted({len(r) for r in rows})}"
            )
        flat = [w for r in rows for w in r]
        if any(not math.isfinite(w) or w < 0 for w in flat):
            raise ValueError("head_weights must be finite and non-negative")
        if sum(flat) <= 0:
            raise ValueError("head_weights are all zero: no head would be read")
        return self

    def check_model(self, model: Any, name: str | None = None) -> None:
        """Raise :class:`CalibrationMismatchError` unless this calibration fits ``model``."""
        shape = head_shape(model)
        digest = config_hash(model)
        if shape != (self.num_layers, self.num_heads) or digest != self.config_hash:
            raise CalibrationMismatchError(
                f"calibration for model {self.model!r} ({self.num_layers} layers x {self.num_heads} heads, "
                f"config {self.config_hash}) does not fit model {name or '?'!r} ({shape[0]} layers x "
                f"{shape[1]} heads, config {digest}); run `omnitrace calibrate --model ...` for it"
            )

    def tracer_config(self) -> TracerConfig:
        """The tracer configuration this calibration recommends for its model.

        The fitted mapping, curation and grounding thresholds were chosen for the learned
        heads; a calibration whose default signal is another one (shipped that way when the
        learned heads did not win on both evaluation sets) recommends that signal with the
        library's defaults, and the fitted settings stay with ``signal="learned"``.
        """
        if self.default_signal != "learned":
            return TracerConfig(signal=self.default_signal)
        return TracerConfig(
            signal=self.default_signal,
            mapping=self.mapping or MappingConfig(),
            curation=self.curation or CurationConfig(),
            grounding=self.grounding,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (parent folders created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")
        return p


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a calibration file.

    Raises:
        InvalidInputError: the file is missing, not JSON or not a calibration (named).
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read calibration {p}: {exc}") from exc
    try:
        return Calibration.model_validate_json(raw)
    except ValueError as exc:
        raise InvalidInputError(f"{p} is not a valid calibration: {exc}") from exc


#: A model folder may carry its own calibration under this name (``omnitrace calibrate --out``).
FOLDER_FILE = "omnitrace-calibration.json"


def find_calibration(name_or_path: str) -> Calibration | None:
    """The calibration for a packaged model name or inside a model folder (``None``: none)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return load_calibration(folder / FOLDER_FILE) if (folder / FOLDER_FILE).is_file() else None
    return packaged_calibration(name_or_path)


def packaged_calibration(model_name: str) -> Calibration | None:
    """The calibration shipped for a packaged model (``None`` when there is none)."""
    entry = resources.files("omnitrace_core").joinpath("calibrations", f"{model_name}.json")
    if not entry.is_file():
        return None
    try:
        return Calibration.model_validate_json(entry.read_text(encoding="utf-8"))
    except ValueError as exc:  # a broken shipped file is our bug: say so, do not guess
        raise ModelLoadError(f"the calibration shipped for {model_name!r} is invalid: {exc}") from exc
