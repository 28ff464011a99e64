"""Token -> source unit: per-unit mass, position-bias correction, top unit and confidence.

For a generated token, its attention row (one score per prompt / earlier-response position)
is summed over each unit's token span, giving the unit *mass*; dividing by the total over
units gives *shares*. Scaffolding positions (template, instruction, question, earlier response
tokens) count in no unit, so they never become a citation.

Small models attend most to the earliest sources regardless of content (attention sinks,
primacy). The optional correction divides each unit's share by a reference share, then
renormalises: what matters is how much *more* than usual this token looks at a unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnitrace_core.config import MappingConfig
from omnitrace_core.sources import SourceUnit

_EPS = 1e-9


@dataclass(frozen=True)
class TokenMapping:
    """Where one generated token's attention went."""

    shares: tuple[float, ...]  # corrected share per unit, sums to 1 (or all 0)
    raw_shares: tuple[float, ...]  # uncorrected share per unit
    unit_index: int  # -1 when no unit received any mass
    confidence: float
    source_fraction: float  # fraction of the whole row that landed on any unit


class UnitIndex:
    """Sums attention rows over the units' token spans (vectorised with a scatter)."""

    def __init__(self, units: Sequence[SourceUnit], exclude_first_positions: int = 0) -> None:
        if not units:
            raise ValueError("no source units")
        self.units = list(units)
        self.end = max(u.token_end for u in units)
        owner = torch.full((self.end,), -1, dtype=torch.long)
        for i, u in enumerate(units):
            if u.token_positions is not None:
                kept = [p for p in u.token_positions if p >= exclude_first_positions]
                owner[torch.tensor(kept, dtype=torch.long)] = i
            else:
                owner[max(u.token_start, exclude_first_positions) : u.token_end] = i
        self.owner = owner
        self._valid = owner >= 0
        self._owner_valid = owner[self._valid]

    def _prefix(self, row: torch.Tensor) -> torch.Tensor:
        # Every captured query sits after the last unit, so its row covers all unit positions.
        if row.shape[0] < self.end:
            raise ValueError(
                f"attention row of length {row.shape[0]} does not cover the units (need {self.end})"
            )
        return row[: self.end].float().cpu()

    def mass(self, row: torch.Tensor) -> torch.Tensor:
        """Per-unit summed score of one row (fp32 tensor of length = number of units)."""
        out = torch.zeros(len(self.units), dtype=torch.float32)
        out.index_add_(0, self._owner_valid, self._prefix(row)[self._valid])
        return out

    def peak_unit(self, row: torch.Tensor, scale: torch.Tensor | None = None) -> int:
        """Unit holding the single highest (optionally per-unit scaled) position score."""
        r = self._prefix(row).clone()
        r[~self._valid] = float("-inf")
        if scale is not None:
            r[self._valid] = r[self._valid] / scale[self._owner_valid]
        pos = int(torch.argmax(r))
        return int(self.owner[pos]) if r[pos] > float("-inf") else -1


def shares_of(mass: torch.Tensor) -> torch.Tensor:
    total = float(mass.sum())
    return mass / total if total > _EPS else torch.zeros_like(mass)


def reference_share(index: UnitIndex, rows: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Mean unit share over reference rows (the prompt's non-source positions)."""
    shares = [shares_of(index.mass(r)) for r in rows]
    shares = [s for s in shares if float(s.sum()) > 0]
    if not shares:
        return None
    return torch.stack(shares).mean(dim=0)


class TokenMapper:
    """Maps successive generated tokens; keeps the running reference for causal correction."""

    def __init__(
        self,
        index: UnitIndex,
        config: MappingConfig,
        prompt_reference: torch.Tensor | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.prompt_reference = prompt_reference
        self._running_sum = torch.zeros(len(index.units), dtype=torch.float32)
        self._running_n = 0

    def _reference(self) -> torch.Tensor | None:
        mode = self.config.bias_correction
        running = self._running_sum / self._running_n if self._running_n else None
        if mode == "prompt":
            return self.prompt_reference
        if mode == "running":
            return running if running is not None else self.prompt_reference
        if mode == "both":
            if running is None or self.prompt_reference is None:
                return self.prompt_reference if running is None else running
            return torch.sqrt(running.clamp_min(_EPS) * self.prompt_reference.clamp_min(_EPS))
        return None

    def map(self, row: torch.Tensor, reading_row: torch.Tensor | None = None) -> TokenMapping:
        """Map one token from its producing ``row``; ``reading_row`` (the token's own row as
        a query, if known) joins it as ``MappingConfig.token_rows`` says."""
        mode = self.config.token_rows
        if reading_row is not None and mode == "reading":
            row, reading_row = reading_row, None
        mass = self.index.mass(row)
        total_row = float(row.float().sum())
        raw = shares_of(mass)
        fraction = float(mass.sum()) / total_row if total_row > 0 else 0.0
        if reading_row is not None and mode == "both":
            read_mass = self.index.mass(reading_row)
            read_total = float(reading_row.float().sum())
            read_raw = shares_of(read_mass)
            if float(read_raw.sum()) > 0:
                raw = shares_of(raw + read_raw) if float(raw.sum()) > 0 else read_raw
                read_fraction = float(read_mass.sum()) / read_total if read_total > 0 else 0.0
                fraction = (fraction + read_fraction) / 2
        ref = self._reference()
        if ref is not None and float(raw.sum()) > 0:
            corrected = shares_of(raw / ref.clamp_min(1e-4))
        else:
            corrected = raw
        if float(raw.sum()) > 0:
            self._running_sum += raw
            self._running_n += 1
        if float(corrected.sum()) <= 0:
            unit, conf = -1, 0.0
        elif self.config.rule == "peak":
            scale = ref.clamp_min(1e-4) if ref is not None else None
            unit = self.index.peak_unit(row, scale)
            conf = float(corrected[unit]) if unit >= 0 else 0.0
        else:
            unit = int(torch.argmax(corrected))
            conf = float(corrected[unit])
        return TokenMapping(
            shares=tuple(float(x) for x in corrected),
            raw_shares=tuple(float(x) for x in raw),
            unit_index=unit,
            confidence=conf,
            source_fraction=fraction,
        )
