"""Token -> source unit: per-unit mass, position-bias correction, top unit and confidence.

For a generated token, its attention row (one score per prompt / earlier-response position)
is summed over each unit's token span, giving the unit *mass*; dividing by the total over
units gives *shares*. Scaffolding positions (template, instruction, question, earlier response
tokens) count in no unit, so they never become a citation.

Small models attend most to the earliest sources regardless of content (attention sinks,
primacy). The optional correction divides each unit's share by a reference share, then
renormalises: what matters is how much *more* than usual this token looks at a unit.

The question can take part as a *competitor* (``MappingConfig.question_competes``): its
positions form one more slot, corrected like a unit and never cited. A token that looks at the
question more than at any unit, relative to usual, is an *echo* of the user's words (the
entity the user asked about, repeated in the answer). An echo still says which source the
sentence is about (its unit choice is unchanged), but not where in that source the answer
is: it would point at wherever the source first names the entity. The assembly therefore
locates the units inside a cited source from the tokens that are not echoes.
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
    echo: bool = False  # the question explains this token better than any unit


class UnitIndex:
    """Sums attention rows over the units' token spans (vectorised with a scatter).

    With ``competitor_positions`` (the question's prompt positions), :meth:`mass` has one more
    entry after the units' (index :attr:`competitor`), which a :class:`TokenMapper` corrects
    like a unit and never maps a token to.
    """

    def __init__(
        self,
        units: Sequence[SourceUnit],
        exclude_first_positions: int = 0,
        competitor_positions: Sequence[int] = (),
    ) -> None:
        if not units:
            raise ValueError("no source units")
        self.units = list(units)
        kept_competitor = [int(p) for p in competitor_positions if p >= exclude_first_positions]
        self.competitor: int | None = len(self.units) if kept_competitor else None
        self.units_end = max(u.token_end for u in units)
        self.end = max([self.units_end] + [p + 1 for p in kept_competitor])
        owner = torch.full((self.end,), -1, dtype=torch.long)
        if kept_competitor:  # units win a position they share with the question
            owner[torch.tensor(kept_competitor, dtype=torch.long)] = len(self.units)
        for i, u in enumerate(units):
            if u.token_positions is not None:
                kept = [p for p in u.token_positions if p >= exclude_first_positions]
                owner[torch.tensor(kept, dtype=torch.long)] = i
            else:
                owner[max(u.token_start, exclude_first_positions) : u.token_end] = i
        self.owner = owner
        self.slots = len(self.units) + (1 if kept_competitor else 0)
        self._unit_positions = (owner >= 0) & (owner < len(self.units))
        self._valid = owner >= 0
        self._owner_valid = owner[self._valid]

    def _prefix(self, row: torch.Tensor) -> torch.Tensor:
        # Every captured query sits after the last unit, so its row covers all unit positions.
        # A reference row from inside the question (causal) does not reach the question's end:
        # the positions it cannot see get no attention.
        if row.shape[0] < self.units_end:
            raise ValueError(
                f"attention row of length {row.shape[0]} does not cover the units (need {self.units_end})"
            )
        out = row[: self.end].float().cpu()
        if out.shape[0] < self.end:
            out = torch.cat([out, out.new_zeros(self.end - out.shape[0])])
        return out

    def mass(self, row: torch.Tensor) -> torch.Tensor:
        """Per-slot summed score of one row: one fp32 entry per unit, then the competitor's."""
        out = torch.zeros(self.slots, dtype=torch.float32)
        out.index_add_(0, self._owner_valid, self._prefix(row)[self._valid])
        return out

    def peak_unit(self, row: torch.Tensor, scale: torch.Tensor | None = None) -> int:
        """Unit holding the single highest (optionally per-unit scaled) position score."""
        r = self._prefix(row).clone()
        keep = self._unit_positions
        if scale is not None:
            r[keep] = r[keep] / scale[self.owner[keep]]
        r[~keep] = float("-inf")
        pos = int(torch.argmax(r))
        return int(self.owner[pos]) if r[pos] > float("-inf") else -1


def shares_of(mass: torch.Tensor) -> torch.Tensor:
    total = float(mass.sum())
    return mass / total if total > _EPS else torch.zeros_like(mass)


def reference_share(
    index: UnitIndex, rows: Sequence[torch.Tensor], slots: bool = False
) -> torch.Tensor | None:
    """Mean unit share over reference rows (the prompt's non-source positions); with ``slots``,
    over every slot (units and the question competitor)."""
    n = index.slots if slots else len(index.units)
    shares = [shares_of(index.mass(r)[:n]) for r in rows]
    shares = [s for s in shares if float(s.sum()) > 0]
    if not shares:
        return None
    return torch.stack(shares).mean(dim=0)


class _Reference:
    """A prompt reference and the running mean of the shares seen so far, combined as
    ``MappingConfig.bias_correction`` says."""

    def __init__(self, mode: str, prompt: torch.Tensor | None, size: int) -> None:
        self.mode = mode
        self.prompt = prompt
        self._sum = torch.zeros(size, dtype=torch.float32)
        self._n = 0

    def get(self) -> torch.Tensor | None:
        running = self._sum / self._n if self._n else None
        if self.mode == "prompt":
            return self.prompt
        if self.mode == "running":
            return running if running is not None else self.prompt
        if self.mode == "both":
            if running is None or self.prompt is None:
                return self.prompt if running is None else running
            return torch.sqrt(running.clamp_min(_EPS) * self.prompt.clamp_min(_EPS))
        return None

    def correct(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``raw`` divided by the reference (before this token joins it), renormalised, and
        that reference."""
        ref = self.get()
        out = shares_of(raw / ref.clamp_min(1e-4)) if ref is not None and float(raw.sum()) > 0 else raw
        if float(raw.sum()) > 0:
            self._sum += raw
            self._n += 1
        return out, ref


class TokenMapper:
    """Maps successive generated tokens; keeps the running reference for causal correction.

    ``prompt_reference`` is the units' reference share (:func:`reference_share`);
    ``competitor_reference`` the same over every slot (``slots=True``), used only to tell
    echoes when the index has a question competitor. :meth:`from_reference_rows` builds both.
    """

    def __init__(
        self,
        index: UnitIndex,
        config: MappingConfig,
        prompt_reference: torch.Tensor | None = None,
        competitor_reference: torch.Tensor | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.prompt_reference = prompt_reference
        mode = config.bias_correction
        self._units = _Reference(mode, prompt_reference, len(index.units))
        self._slots = (
            _Reference(mode, competitor_reference, index.slots) if index.competitor is not None else None
        )

    @classmethod
    def from_reference_rows(
        cls, index: UnitIndex, config: MappingConfig, rows: Sequence[torch.Tensor]
    ) -> TokenMapper:
        """A mapper whose prompt reference comes from ``rows`` (units and, if any, slots)."""
        slots = reference_share(index, rows, slots=True) if index.competitor is not None else None
        return cls(index, config, reference_share(index, rows), slots)

    def map(self, row: torch.Tensor, reading_row: torch.Tensor | None = None) -> TokenMapping:
        """Map one token from its producing ``row``; ``reading_row`` (the token's own row as
        a query, if known) joins it as ``MappingConfig.token_rows`` says."""
        mode = self.config.token_rows
        if reading_row is not None and mode == "reading":
            row, reading_row = reading_row, None
        n = len(self.index.units)
        mass = self.index.mass(row)
        total_row = float(row.float().sum())
        raw, raw_slots = shares_of(mass[:n]), shares_of(mass)
        fraction = float(mass[:n].sum()) / total_row if total_row > 0 else 0.0
        if reading_row is not None and mode == "both":
            read_mass = self.index.mass(reading_row)
            read_total = float(reading_row.float().sum())
            read_raw = shares_of(read_mass[:n])
            if float(read_raw.sum()) > 0:
                raw = shares_of(raw + read_raw) if float(raw.sum()) > 0 else read_raw
                read_slots = shares_of(read_mass)
                raw_slots = shares_of(raw_slots + read_slots) if float(raw_slots.sum()) > 0 else read_slots
                read_fraction = float(read_mass[:n].sum()) / read_total if read_total > 0 else 0.0
                fraction = (fraction + read_fraction) / 2
        corrected, ref = self._units.correct(raw)
        echo = False
        if self._slots is not None:
            slot_share, _ = self._slots.correct(raw_slots)
            echo = bool(slot_share[n] > 0 and slot_share[n] > slot_share[:n].max())
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
            echo=echo,
        )
