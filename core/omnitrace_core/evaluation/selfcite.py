"""Self-citation: ask the model itself which source a sentence came from.

The cheapest attribution a deployed RAG system uses is the model's own ``[doc1]`` markers.
They are a natural peer for attention-based attribution: same model, no extra machinery, but
only as good as the model's instruction following. Two variants:

``self_cite_prediction`` (teacher-forced)
    Every method under comparison must attribute the *same* response text, so the markers are
    read, not generated: for each sentence the prompt (sources shown as ``[doc1] Title`` by
    :func:`~omnitrace_core.sources.build_prompt`) plus the response up to the end of that
    sentence plus ``" ["`` is forced, and the model's probability of each source label as the
    continuation is read off (a multi-token label scores its whole token sequence). The most
    probable label is cited, with its probability normalised over the labels as the score.
``self_cite_generate`` (generated)
    The model is instructed to cite ``[docN]`` after each sentence and answers freely; the
    markers are parsed per sentence and stripped from the text (:func:`parse_markers`), so the
    text and the sentence offsets refer to the answer without its markers.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation.faithfulness import check_length, prompt_ids, response_tokens, text_sources
from omnitrace_core.sources import TextSource

if TYPE_CHECKING:
    from omnitrace_core.tracer import Tracer

Row = Mapping[str, Any]

CUE = " ["
"""What is forced after a sentence so the model's next tokens are a source label."""

CITE_INSTRUCTION = " After each sentence, cite its source in square brackets, like {example}."
"""Appended to the question (the user turn): a 135M model ignores it in the system prompt."""

GENERATE_NO_REPEAT_NGRAM = 6
"""Loop guard for generate mode: the tracer's 3 would forbid a second ``[doc1]`` (`` [``, ``doc``,
``1`` is a 3-gram), 6 still lets the same marker follow different sentences."""

_MARKER = re.compile(r"[ \t]*\[([^\[\]\n]{1,80})\]")
_LABEL_SPLIT = re.compile(r"\s*(?:,|;|\||\band\b)\s*")


def shown_label(source: TextSource) -> str:
    """The label the prompt shows for a source (``[label]``, or ``[id]`` when it has none)."""
    return source.label or source.id


# -- teacher-forced -------------------------------------------------------------------------------
def label_token_ids(tokenizer: Any, label: str) -> list[int]:
    """The tokens of ``label`` as they follow the cue ``" ["`` (tokenised in context).

    Tokenising the label on its own can differ from how it continues ``" ["`` (sentencepiece
    adds a word-start marker), so the cue's tokens are subtracted from those of cue + label.
    """
    cue = tokenizer(CUE, add_special_tokens=False)["input_ids"]
    full = tokenizer(CUE + label, add_special_tokens=False)["input_ids"]
    if full[: len(cue)] == cue and len(full) > len(cue):
        return [int(t) for t in full[len(cue) :]]
    ids = [int(t) for t in tokenizer(label, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise InvalidInputError(f"source label {label!r} produced no tokens")
    return ids


def _last_logprobs(tracer: Tracer, ids: Sequence[int], count: int) -> torch.Tensor:
    """Log-softmax rows predicting the token after each of the last ``count`` positions."""
    model = tracer.model
    x = torch.tensor([list(ids)], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
    return torch.log_softmax(logits[0, -count:].float(), dim=-1).cpu()


def label_logprobs(
    tracer: Tracer, context: Sequence[int], labels: Sequence[Sequence[int]]
) -> tuple[list[float], int]:
    """Log-probability of each label token sequence as the continuation of ``context``.

    Labels sharing all tokens but their last (``doc`` + ``1``, ``doc`` + ``2``...) are scored by
    one forward over context + that shared prefix: its positions give the prefix tokens'
    probabilities and the distribution over every label's last token. Returns the
    log-probabilities and the number of forward passes.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, label in enumerate(labels):
        groups.setdefault(tuple(label[:-1]), []).append(k)
    out = [0.0] * len(labels)
    for prefix, members in groups.items():
        rows = _last_logprobs(tracer, [*context, *prefix], len(prefix) + 1)
        prefix_logp = sum(float(rows[j, t]) for j, t in enumerate(prefix))
        for k in members:
            out[k] = prefix_logp + float(rows[len(prefix), labels[k][-1]])
    return out, len(groups)


def self_cite_prediction(
    tracer: Tracer, row: Row, text: str, *, min_label_mass: float = 0.0
) -> tuple[dict[str, Any], int, float]:
    """The model's own citation of every sentence of ``text``, read teacher-forced.

    For each sentence (the tracer's chunker spans) the model sees the attribution prompt, the
    response up to the sentence's end, and ``" ["``; the label it would write next is cited.

    Args:
        tracer: Supplies model, tokenizer, chunker and prompt layout.
        row: A benchmark row (``id``, ``sources``, ``question``).
        text: The response to attribute (the same text every compared method attributes).
        min_label_mass: A sentence is left uncited (``grounded: false``) when the labels'
            total probability after ``" ["`` is below this (0: always cite the best label).

    Returns:
        The prediction row (shared format; each sentence also carries ``label_mass``), the
        number of forward passes and the seconds taken.
    """
    t0 = time.perf_counter()
    srcs = text_sources(row)
    tok = tracer.tokenizer
    prompt = prompt_ids(tracer, srcs, str(row["question"]))
    resp_ids, offsets = response_tokens(tok, text)
    cue = [int(t) for t in tok(CUE, add_special_tokens=False)["input_ids"]]
    labels = [label_token_ids(tok, shown_label(s)) for s in srcs]
    check_length(tracer, len(prompt), len(resp_ids) + len(cue) + max(len(x) for x in labels))
    passes = 0
    sentences = []
    for start, end in tracer.chunker.sentences(text):
        upto = sum(1 for _, b in offsets if b <= end)
        logps, used = label_logprobs(tracer, [*prompt, *resp_ids[:upto], *cue], labels)
        passes += used
        probs = [math.exp(lp) for lp in logps]
        total = sum(probs)
        mass = {s.id: (p / total if total > 0 else 0.0) for s, p in zip(srcs, probs, strict=True)}
        citations = []
        if total > 0 and total >= min_label_mass:
            best = max(mass, key=lambda sid: mass[sid])
            citations = [{"source_id": best, "score": mass[best]}]
        sentences.append(
            {
                "text": text[start:end],
                "start": start,
                "end": end,
                "citations": citations,
                "source_mass": mass,
                "grounded": bool(citations),
                "label_mass": total,
            }
        )
    prediction = {"id": row["id"], "text": text, "method": "self_cite", "sentences": sentences}
    return prediction, passes, time.perf_counter() - t0


# -- generated ------------------------------------------------------------------------------------
def parse_markers(raw: str, labels: Mapping[str, str]) -> tuple[str, list[tuple[int, list[str]]]]:
    """Strip citation markers from a generated answer.

    A marker is ``[label]`` (several labels may share one: ``[doc1, doc2]``, ``[doc1; doc2]``);
    labels match case-insensitively. Brackets naming no known label are left in the text
    (they are not citations). The marker and the spaces before it are removed, so
    ``"Moreau [doc2]."`` becomes ``"Moreau."``.

    Args:
        raw: The generated text with markers.
        labels: Label (as shown to the model) -> source id.

    Returns:
        The clean text and the markers as ``(position in the clean text, [source ids])``.
    """
    lookup = {k.lower(): v for k, v in labels.items()}
    pieces: list[str] = []
    markers: list[tuple[int, list[str]]] = []
    clean_len = 0
    last = 0
    for match in _MARKER.finditer(raw):
        parts = [p.strip().lower() for p in _LABEL_SPLIT.split(match.group(1))]
        ids = list(dict.fromkeys(lookup[p] for p in parts if p in lookup))
        if not ids:
            continue
        kept = raw[last : match.start()]
        pieces.append(kept)
        clean_len += len(kept)
        markers.append((clean_len, ids))
        last = match.end()
    pieces.append(raw[last:])
    clean = "".join(pieces)
    lead = len(clean) - len(clean.lstrip())
    clean = clean.strip()
    return clean, [(max(0, min(p - lead, len(clean))), ids) for p, ids in markers]


def assign_markers(
    spans: Sequence[tuple[int, int]], markers: Sequence[tuple[int, list[str]]]
) -> list[list[str]]:
    """The source ids cited by each sentence span.

    A marker belongs to the last sentence starting before it (it closes that sentence, whether
    written before or after the full stop); a marker before every sentence belongs to the
    first.
    """
    cited: list[list[str]] = [[] for _ in spans]
    if not spans:
        return cited
    for position, ids in markers:
        owner = 0
        for i, (start, _) in enumerate(spans):
            if start < position:
                owner = i
        for sid in ids:
            if sid not in cited[owner]:
                cited[owner].append(sid)
    return cited


def _sentence_rows(
    text: str, spans: Sequence[tuple[int, int]], cited: Sequence[list[str]], ids: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for (start, end), sids in zip(spans, cited, strict=True):
        share = 1.0 / len(sids) if sids else 0.0
        rows.append(
            {
                "text": text[start:end],
                "start": start,
                "end": end,
                "citations": [{"source_id": sid, "score": share} for sid in sids],
                "source_mass": {sid: (share if sid in sids else 0.0) for sid in ids},
                "grounded": bool(sids),
            }
        )
    return rows


def self_cite_generate(
    tracer: Tracer, row: Row, *, max_new_tokens: int | None = None
) -> tuple[dict[str, Any], int, float]:
    """Let the model answer with ``[docN]`` markers and read its citations from them.

    The prompt is the attribution prompt with an instruction to cite after each sentence
    appended to the question. Greedy decoding, with :data:`GENERATE_NO_REPEAT_NGRAM` instead of
    the tracer's ``no_repeat_ngram_size`` (which would forbid citing the same source twice).

    Args:
        tracer: Supplies model, tokenizer, chunker and prompt layout.
        row: A benchmark row (``id``, ``sources``, ``question``).
        max_new_tokens: Defaults to the tracer's generation setting.

    Returns:
        The prediction row (text without markers; the raw answer under ``raw_text``), the
        number of forward passes (one per generated token) and the seconds taken.
    """
    t0 = time.perf_counter()
    srcs = text_sources(row)
    tok = tracer.tokenizer
    cfg = tracer.config
    question = str(row["question"]).strip() + CITE_INSTRUCTION.format(example=f"[{shown_label(srcs[0])}]")
    prompt = prompt_ids(tracer, srcs, question)
    budget = max_new_tokens if max_new_tokens is not None else cfg.generation.max_new_tokens
    if budget < 1:
        raise InvalidInputError(f"max_new_tokens must be >= 1, got {budget}")
    check_length(tracer, len(prompt), budget)
    model = tracer.model
    x = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=budget,
            do_sample=False,
            no_repeat_ngram_size=GENERATE_NO_REPEAT_NGRAM,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    new = out[0, len(prompt) :].tolist()
    raw = tok.decode(new, skip_special_tokens=True)
    labels = {shown_label(s): s.id for s in srcs}
    text, markers = parse_markers(raw, labels)
    spans = tracer.chunker.sentences(text)
    cited = assign_markers(spans, markers)
    prediction = {
        "id": row["id"],
        "text": text,
        "raw_text": raw,
        "method": "self_cite_generate",
        "sentences": _sentence_rows(text, spans, cited, [s.id for s in srcs]),
    }
    return prediction, len(new), time.perf_counter() - t0
