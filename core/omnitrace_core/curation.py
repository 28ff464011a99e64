"""Per-sentence source curation (paper Appendix A.1): a concise set of sources per sentence.

Every token of a sentence votes for its top source unit. The steps, each a config knob:

1. POS weight ``w``: content words (nouns, names, numbers) carry the claim; function words
   and punctuation say little about where it came from.
2. Confidence: a token's vote is ``w * confidence ** gamma``, so sharply attributed tokens
   dominate diffuse ones.
3. Run coherence: consecutive voting tokens with the same unit form a run. A run holding less
   than ``run_min`` of the sentence's vote is a stray; its votes are multiplied by
   ``1 - alpha``.
4. ``p_min``: units whose normalised vote is below it are dropped.
5. Coverage: the remaining units are taken in decreasing vote until their cumulative share
   reaches ``coverage``.
6. (Ours, optional) ``min_relative``: a unit must hold at least this fraction of the top
   unit's vote.

The result's scores are the normalised votes of the chosen units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omnitrace_core.config import CurationConfig


@dataclass(frozen=True)
class TokenVote:
    """One token's contribution: its top unit (or -1), confidence and POS tag."""

    unit_index: int
    confidence: float
    pos: str


def pos_weight(pos: str, config: CurationConfig) -> float:
    return config.pos_weights.get(pos, config.other_pos_weight)


def unit_votes(tokens: Sequence[TokenVote], config: CurationConfig) -> dict[int, float]:
    """Normalised vote per unit after POS weighting, confidence^gamma and run coherence."""
    weights = [
        pos_weight(t.pos, config) * (t.confidence**config.gamma) if t.unit_index >= 0 else 0.0 for t in tokens
    ]
    total = sum(weights)
    if total <= 0:
        return {}
    votes: dict[int, float] = {}
    # Runs over voting tokens: zero-weight tokens (punctuation, spaces) neither break nor join runs.
    run: list[int] = []

    def close(run_tokens: list[int]) -> None:
        if not run_tokens:
            return
        mass = sum(weights[i] for i in run_tokens)
        factor = 1.0 if mass / total >= config.run_min else 1.0 - config.alpha
        unit = tokens[run_tokens[0]].unit_index
        votes[unit] = votes.get(unit, 0.0) + mass * factor

    for i, t in enumerate(tokens):
        if weights[i] <= 0:
            continue
        if run and tokens[run[-1]].unit_index != t.unit_index:
            close(run)
            run = []
        run.append(i)
    close(run)
    norm = sum(votes.values())
    return {u: v / norm for u, v in votes.items()} if norm > 0 else {}


def curate(tokens: Sequence[TokenVote], config: CurationConfig) -> list[tuple[int, float]]:
    """Chosen ``(unit_index, score)`` pairs for one sentence, best first."""
    votes = unit_votes(tokens, config)
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
    if not config.enabled:
        return [(u, s) for u, s in ranked if s > 0]
    chosen: list[tuple[int, float]] = []
    covered = 0.0
    top = ranked[0][1] if ranked else 0.0
    for unit, score in ranked:
        if score < config.p_min or score < config.min_relative * top:
            break
        chosen.append((unit, score))
        covered += score
        if covered >= config.coverage:
            break
        if config.max_citations is not None and len(chosen) >= config.max_citations:
            break
    return chosen
