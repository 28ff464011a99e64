"""Faithfulness of citations: does taking the cited sources away make the sentence less likely?

Agreement with gold labels says whether a citation matches what an annotator (or the dev set's
keys) expected; it does not say whether the model *used* the cited source. ContextCite (Cohen-
Wang et al., 2024) measures that with a log-probability drop: remove the cited sources from the
context, force the same response again, and see how much the log-probability of the cited
sentence falls. A faithful citation causes a large drop; removing a random source should cause
a small one. :func:`logp_drops` computes that drop for every response sentence, for any set of
removed sources, on the tracer's own model and prompt layout (the same
:func:`~omnitrace_core.sources.build_prompt` the attribution used), so the numbers compare
methods that attribute the same response text.

The helpers :func:`prompt_ids` and :func:`response_tokens` are shared with the other
model-based peers (:mod:`.selfcite`, :mod:`.contextcite_peer`) so
all of them force the response exactly as :meth:`Tracer.forced_rows` does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from omnitrace_core.errors import ContextLengthError, InvalidInputError
from omnitrace_core.sources import TextSource, build_prompt, validate_sources

if TYPE_CHECKING:
    from omnitrace_core.tracer import Tracer

Row = Mapping[str, Any]


def text_sources(row: Row) -> list[TextSource]:
    """The row's sources, validated, in order; the model-based measures read text sources only.

    Raises:
        InvalidInputError: naming a source that is not text (or is malformed).
    """
    out: list[TextSource] = []
    for src in validate_sources(row["sources"]):
        if not isinstance(src, TextSource):
            raise InvalidInputError(
                f"source {src.id!r} is {getattr(src, 'modality', type(src).__name__)}: the "
                "log-prob drop, self-citation and ContextCite measures read text sources only"
            )
        out.append(src)
    return out


def prompt_ids(
    tracer: Tracer,
    sources: Sequence[TextSource],
    question: str,
    system_prompt: str | None = None,
) -> list[int]:
    """Token ids of the tracer's prompt over ``sources`` (possibly a subset, possibly none).

    Kept sources are laid out exactly as in attribution (same template, labels, titles and
    order). With no source left the prompt keeps its scaffolding (system prompt, the empty
    ``Sources:`` header, the question), so an ablation differs from the full prompt only by
    the removed source blocks.
    """
    cfg = tracer.config
    prompt = system_prompt if system_prompt is not None else cfg.system_prompt
    return build_prompt(tracer.tokenizer, list(sources), question, prompt, cfg.split_sources).input_ids


def response_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The response's token ids and monotonic character offsets, tokenised as the tracer forces it.

    The response is tokenised on its own (not together with the prompt), as in
    :meth:`Tracer.forced_rows`; offsets of byte-level tokens may overlap or be empty, so they are
    made monotonic.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets: list[tuple[int, int]] = []
    for a, b in enc["offset_mapping"]:
        start = max(int(a), offsets[-1][1] if offsets else 0)
        offsets.append((start, max(int(b), start)))
    return ids, offsets


def token_sentence_index(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each token, the index of the sentence span holding its last character, or -1.

    The last character decides because byte-level tokens carry their leading space (`` The``):
    the token belongs to the sentence its word is in. Whitespace between sentences belongs to
    none.
    """
    out = []
    for a, b in offsets:
        owner = -1
        if b > a:
            for i, (start, end) in enumerate(spans):
                if start <= b - 1 < end:
                    owner = i
                    break
        out.append(owner)
    return out


def check_length(tracer: Tracer, prompt_len: int, response_len: int) -> None:
    """Raise :class:`ContextLengthError` when prompt + response exceed the model's window."""
    window = tracer.loaded.context_window
    if prompt_len + response_len > window:
        raise ContextLengthError(
            f"prompt ({prompt_len} tokens) + response ({response_len} tokens) exceed the model's "
            f"context window of {window}"
        )


def token_logprobs(tracer: Tracer, prompt: Sequence[int], continuation: Sequence[int]) -> torch.Tensor:
    """Log-probability of each continuation token after ``prompt`` (one forward pass, fp32, CPU)."""
    check_length(tracer, len(prompt), len(continuation))
    model = tracer.model
    ids = torch.tensor([[*prompt, *continuation]], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    n, p = len(continuation), len(prompt)
    logp = torch.log_softmax(logits[0, p - 1 : p - 1 + n].float(), dim=-1)
    target = torch.tensor(list(continuation), device=logp.device)
    return logp.gather(1, target[:, None])[:, 0].cpu()


def _check_inputs(
    text: str, sentences: Sequence[tuple[int, int]], removed: Sequence[Sequence[str]], known: set[str]
) -> None:
    if len(removed) != len(sentences):
        raise InvalidInputError(
            f"removed has {len(removed)} entries but there are {len(sentences)} sentences; give one "
            "list of removed source ids per sentence"
        )
    for i, (start, end) in enumerate(sentences):
        if not 0 <= start <= end <= len(text):
            raise InvalidInputError(
                f"sentence {i} span ({start}, {end}) is not inside the text (length {len(text)})"
            )
    for i, ids in enumerate(removed):
        unknown = [sid for sid in ids if sid not in known]
        if unknown:
            raise InvalidInputError(
                f"removed[{i}] names unknown source ids {unknown}; the row's sources are {sorted(known)}"
            )


def logp_drops(
    tracer: Tracer,
    row: Row,
    text: str,
    sentences: list[tuple[int, int]],
    removed: list[list[str]],
) -> tuple[list[float], int]:
    """Drop in each sentence's log-probability when its ``removed`` sources leave the prompt.

    For sentence ``i`` (a character span of ``text``) the log-probability is the sum of its
    tokens' teacher-forced log-probabilities, each conditioned on the prompt and the whole
    response before it. The drop is ``logp(full prompt) - logp(prompt without removed[i])``:
    ContextCite's measure of whether cited sources were actually used (a faithful citation's
    removal makes the sentence much less likely). One forward over the full prompt gives every
    sentence's baseline; sentences with the same removed set share one forward. A sentence
    with nothing removed (or no token) has drop 0 and costs nothing.

    Args:
        tracer: Supplies the model, tokenizer and prompt layout (system prompt, split_sources).
        row: A benchmark row (``sources``, ``question``).
        text: The response being attributed.
        sentences: ``(start, end)`` character spans in ``text``.
        removed: For each sentence, the source ids to take out of the prompt (may be all).

    Returns:
        The drops (one per sentence) and the number of forward passes used.

    Raises:
        InvalidInputError: on a length mismatch, a span outside ``text`` or an unknown source id.
    """
    drops, passes = logp_drops_many(tracer, row, text, sentences, {"removed": removed})
    return drops["removed"], passes


def logp_drops_many(
    tracer: Tracer,
    row: Row,
    text: str,
    sentences: list[tuple[int, int]],
    removals: Mapping[str, list[list[str]]],
) -> tuple[dict[str, list[float]], int]:
    """:func:`logp_drops` for several removal plans at once (e.g. one per citation method).

    The plans share the full-prompt forward and every identical removed set, so comparing
    methods at k=1 costs at most one forward per source plus one.

    Returns:
        ``{plan name: drops}`` and the number of forward passes used.
    """
    srcs = text_sources(row)
    known = {s.id for s in srcs}
    for name, removed in removals.items():
        try:
            _check_inputs(text, sentences, removed, known)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{name}: {exc}" if len(removals) > 1 else str(exc)) from exc
    drops = {name: [0.0] * len(sentences) for name in removals}
    ids, offsets = response_tokens(tracer.tokenizer, text)
    owner = token_sentence_index(offsets, sentences)
    tokens_of: list[list[int]] = [[] for _ in sentences]
    for k, i in enumerate(owner):
        if i >= 0:
            tokens_of[i].append(k)
    groups: dict[frozenset[str], list[tuple[str, int]]] = {}
    for name, removed in removals.items():
        for i, gone in enumerate(removed):
            if gone and tokens_of[i]:
                groups.setdefault(frozenset(gone), []).append((name, i))
    if not groups:
        return drops, 0
    question = str(row["question"])
    base = token_logprobs(tracer, prompt_ids(tracer, srcs, question), ids)
    passes = 1
    for removed_set, members in groups.items():
        kept = [s for s in srcs if s.id not in removed_set]
        ablated = token_logprobs(tracer, prompt_ids(tracer, kept, question), ids)
        passes += 1
        for name, i in members:
            at = tokens_of[i]
            drops[name][i] = float(base[at].sum() - ablated[at].sum())
    return drops, passes


def random_removals(source_ids: Sequence[str], k: int, n_sentences: int, seed: int | str) -> list[list[str]]:
    """``k`` distinct random source ids per sentence: the control for :func:`logp_drops`.

    A citation method is only informative if removing what it cites hurts more than removing
    the same number of random sources. Seeded (e.g. with the row id) so runs are reproducible.

    Raises:
        InvalidInputError: if ``k`` is negative or larger than the number of sources.
    """
    ids = list(source_ids)
    if not 0 <= k <= len(ids):
        raise InvalidInputError(f"k={k} must be between 0 and the number of sources ({len(ids)})")
    if n_sentences < 0:
        raise InvalidInputError(f"n_sentences={n_sentences} must be >= 0")
    rng = random.Random(seed)
    return [rng.sample(ids, k) for _ in range(n_sentences)]
