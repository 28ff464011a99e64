"""ContextCite as a peer: ablate sources, fit a linear surrogate, cite by its weights.

ContextCite (Cohen-Wang et al., 2024; the ``context-cite`` package) attributes a response by
forcing it under many random ablations of the context and fitting a sparse linear model
(LASSO) from "which parts were kept" to the log-odds of the selected response span. It needs
``num_ablations`` forward passes per row (default 64) where OmniTrace needs one, so it is the
natural cost/quality peer.

To compare like with like it runs here on the tracer's model, prompt and forced response:

- **Parts = sources.** A :class:`BaseContextPartitioner` subclass makes one part per source
  (ContextCite's own partitioner splits the context into sentences with nltk).
- **Our prompt, not its template.** ``ContextCiter`` formats ``"Context: ...\\n\\nQuery: ..."``
  into a single user message. The subclass overrides ``_get_prompt_ids`` so every ablation is
  :func:`~omnitrace_core.sources.build_prompt` over the kept sources (system prompt, ``[doc1]
  Title`` headers, ``Question:``), exactly the layout attribution sees; no source kept leaves
  the scaffolding and the question (:func:`omnitrace_core.evaluation.faithfulness.prompt_ids`).
- **The given response, tokenised as the tracer forces it.** ``ContextCiter`` would generate
  its own response and re-tokenise prompt + response together; the subclass supplies the
  response and its separately tokenised ids and maps character spans with their offsets, so
  the full context is never run (forward passes = ``num_ablations``).
- The package's ablation masks (seeded 0..n-1, keep probability 0.5), forward loop and LASSO
  solver (alpha 0.01) are used unchanged.

Offline and CPU: the package calls ``nltk.download("punkt_tab")`` when imported (for its
sentence splitter, which is not used here); that call is replaced by a no-op during the import
so nothing is fetched. Its per-ablation ``tqdm`` bar and CUDA-autocast warning are silenced
while it runs. ``context-cite`` is an optional dependency, imported only when used.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation.faithfulness import check_length, prompt_ids, response_tokens, text_sources
from omnitrace_core.sources import TextSource

if TYPE_CHECKING:
    from omnitrace_core.tracer import Tracer

Row = Mapping[str, Any]

INSTALL_HINT = "pip install 'omnitrace-integrations[eval]'"


def _import_context_cite() -> Any:
    """Import ``context_cite`` without letting it reach the network.

    Raises:
        ImportError: naming the extra to install when the package (or nltk) is missing.
    """
    try:
        import nltk
    except ImportError as exc:
        raise ImportError(f"the ContextCite peer needs context-cite and nltk: {INSTALL_HINT}") from exc
    original = nltk.download
    nltk.download = lambda *args, **kwargs: True  # its import fetches punkt_tab; we never split with nltk
    try:
        import context_cite
        import context_cite.context_partitioner
        import context_cite.utils
    except ImportError as exc:
        raise ImportError(f"the ContextCite peer needs context-cite: {INSTALL_HINT}") from exc
    finally:
        nltk.download = original
    return context_cite


@functools.cache
def _classes() -> tuple[type, type]:
    """The source partitioner and citer classes (built lazily: they subclass context_cite's)."""
    cc = _import_context_cite()
    base_partitioner = cc.context_partitioner.BaseContextPartitioner

    class SourcePartitioner(base_partitioner):  # type: ignore[valid-type,misc]
        """One ContextCite part per source, shown as the prompt shows it."""

        def __init__(self, sources: Sequence[TextSource]) -> None:
            self.blocks = [_block(s) for s in sources]
            super().__init__("".join(self.blocks))
            self.source_list = list(sources)

        @property
        def num_sources(self) -> int:
            return len(self.source_list)

        def split_context(self) -> None:
            """Nothing to split: the parts are the sources."""

        def get_source(self, index: int) -> str:
            return str(self.blocks[index])

        def get_context(self, mask: Any = None) -> str:
            return "".join(self.blocks[i] for i in self.kept_indices(mask))

        def kept_indices(self, mask: Any) -> list[int]:
            if mask is None:
                return list(range(self.num_sources))
            return [i for i, keep in enumerate(mask) if keep]

        def kept(self, mask: Any) -> list[TextSource]:
            return [self.source_list[i] for i in self.kept_indices(mask)]

    class OmniTraceCiter(cc.ContextCiter):  # type: ignore[name-defined]
        """ContextCiter over our prompt layout and a given, separately tokenised response."""

        def __init__(
            self,
            tracer: Tracer,
            sources: Sequence[TextSource],
            question: str,
            response: str,
            **kwargs: Any,
        ) -> None:
            partitioner = SourcePartitioner(sources)
            super().__init__(
                tracer.model,
                tracer.tokenizer,
                partitioner.context,
                question,
                partitioner=partitioner,
                **kwargs,
            )
            self.tracer = tracer
            self.given_response = response
            self.response_ids_list, self.response_offsets = response_tokens(tracer.tokenizer, response)

        def _get_prompt_ids(self, mask: Any = None, return_prompt: bool = False) -> Any:
            kept = self.partitioner.kept(mask)
            ids = prompt_ids(self.tracer, kept, self.query)
            if return_prompt:
                return ids, self.tokenizer.decode(ids)
            return ids

        @property
        def response(self) -> str:
            return self.given_response

        @property
        def _response_ids(self) -> list[int]:
            return self.response_ids_list

        def _char_range_to_token_range(self, start_index: int, end_index: int) -> tuple[int, int]:
            return char_span_to_tokens(self.response_offsets, start_index, end_index)

    return SourcePartitioner, OmniTraceCiter


def _block(source: TextSource) -> str:
    """A source as ContextCite reports it (the prompt's header and text)."""
    header = f"[{source.label or source.id}]" + (f" {source.title}" if source.title else "")
    return f"{header}\n{source.text.strip()}\n\n"


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The ``[first, last + 1)`` token range covering characters ``[start, end)``.

    Raises:
        InvalidInputError: if no token overlaps the span.
    """
    hit = [k for k, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not hit:
        raise InvalidInputError(f"no response token overlaps characters [{start}, {end})")
    return hit[0], hit[-1] + 1


def default_num_ablations() -> int:
    """ContextCiter's own default number of ablations (64 in context-cite 0.0.4)."""
    _classes()
    from context_cite import ContextCiter

    return int(inspect.signature(ContextCiter.__init__).parameters["num_ablations"].default)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the package's per-ablation progress bar and CPU autocast warnings while it runs.

    Swaps ``context_cite.utils.tqdm`` for the duration (not thread-safe: evaluation is
    sequential).
    """
    import context_cite.utils as cc_utils

    original = cc_utils.tqdm
    cc_utils.tqdm = functools.partial(original, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*autocast.*")
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            yield
    finally:
        cc_utils.tqdm = original


def cite_from_scores(scores: Mapping[str, float], min_relative: float) -> list[tuple[str, float]]:
    """Sources with a positive weight of at least ``min_relative`` x the top weight, best first.

    The top positively weighted source is always cited; with no positive weight nothing is
    (the surrogate found no source whose presence raises the sentence's probability).
    """
    positive = {sid: v for sid, v in scores.items() if v > 0}
    if not positive:
        return []
    best = max(positive.values())
    picked = [(sid, v) for sid, v in positive.items() if v >= min_relative * best]
    return sorted(picked, key=lambda kv: -kv[1])


def contextcite_prediction(
    tracer: Tracer,
    row: Row,
    text: str,
    num_ablations: int | None = None,
    *,
    min_relative: float = 0.5,
) -> tuple[dict[str, Any], int, float]:
    """ContextCite's citations for every sentence of ``text``, with one part per source.

    Args:
        tracer: Supplies the model, tokenizer, chunker (sentence spans) and prompt layout.
        row: A benchmark row (``id``, ``sources``, ``question``).
        text: The response to attribute (forced, never generated here).
        num_ablations: Ablated forward passes for the surrogate; None = ContextCite's default.
        min_relative: Cite sources whose weight is at least this fraction of the top weight.

    Returns:
        The prediction row (each sentence's ``source_mass`` = its normalised positive weights;
        raw LASSO weights under ``weights``), the forward passes (= ``num_ablations``: the
        full context is not run) and the seconds taken.

    Raises:
        ImportError: when context-cite is not installed (names the extra).
        InvalidInputError: on an empty response or ``num_ablations < 2``.
    """
    t0 = time.perf_counter()
    _, citer_cls = _classes()
    srcs = text_sources(row)
    if not text.strip():
        raise InvalidInputError("response is empty: nothing to attribute")
    n = default_num_ablations() if num_ablations is None else num_ablations
    if n < 2:
        raise InvalidInputError(f"num_ablations={n}: the surrogate needs at least 2 ablations")
    question = str(row["question"])
    tokenizer = tracer.tokenizer
    pad_before = tokenizer.pad_token  # ContextCiter sets pad = eos on tokenizers without one
    sentences = []
    try:
        citer = citer_cls(tracer, srcs, question, text, num_ablations=n)
        check_length(tracer, len(prompt_ids(tracer, srcs, question)), len(citer.response_ids_list))
        with _quiet():
            for start, end in tracer.chunker.sentences(text):
                weights = citer.get_attributions(start, end, verbose=False)
                scores = {s.id: float(w) for s, w in zip(srcs, weights, strict=True)}
                cited = cite_from_scores(scores, min_relative)
                positive = {sid: max(0.0, v) for sid, v in scores.items()}
                total = sum(positive.values())
                sentences.append(
                    {
                        "text": text[start:end],
                        "start": start,
                        "end": end,
                        "citations": [{"source_id": sid, "score": v / total} for sid, v in cited],
                        "source_mass": {sid: (v / total if total else 0.0) for sid, v in positive.items()},
                        "grounded": bool(cited),
                        "weights": scores,
                    }
                )
    finally:
        if pad_before is None:
            tokenizer.pad_token = None
    prediction = {"id": row["id"], "text": text, "method": "contextcite", "sentences": sentences}
    passes = n if sentences else 0
    return prediction, passes, time.perf_counter() - t0
