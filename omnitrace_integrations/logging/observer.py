"""An OmniTrace observer that writes structlog events for each generation and cited sentence."""

from __future__ import annotations

from typing import Any

import structlog

from omnitrace_core.observers import GenerationInfo, TraceObserver
from omnitrace_core.results import SentenceAttribution, TracedAnswer
from omnitrace_integrations.logging import events as E


class StructlogObserver(TraceObserver):
    """Logs ``generation_started`` / ``sentence_cited`` / ``generation_finished`` and failures.

    Events carry ids, scores, counts and timings, never the question, sources or answer text.
    The observer only calls ``structlog.get_logger``; how records are rendered and where they go
    is the application's structlog configuration.

    Args:
        logger: A structlog logger to use (default: ``structlog.get_logger("omnitrace")``).
        score_digits: Round citation scores to this many digits in events.
    """

    def __init__(self, logger: Any | None = None, *, score_digits: int = 4) -> None:
        self._log = logger if logger is not None else structlog.get_logger(E.LOGGER_NAME)
        self.score_digits = score_digits

    def on_generation_start(self, info: GenerationInfo) -> None:
        self._log.info(
            E.GENERATION_STARTED,
            run_id=info.run_id,
            operation=info.operation,
            model=info.model,
            signal=info.signal,
            source_ids=list(info.source_ids),
            prompt_tokens=info.prompt_tokens,
            request=dict(info.request),
        )

    def on_sentence(self, info: GenerationInfo, sentence: SentenceAttribution) -> None:
        fields: dict[str, Any] = {
            "run_id": info.run_id,
            "index": sentence.index,
            "char_start": sentence.char_start,
            "char_end": sentence.char_end,
            "grounded": sentence.grounded,
        }
        if not sentence.citations:
            self._log.warning(E.CURATION_EMPTY, **fields, source_mass=dict(sentence.source_mass))
            return
        self._log.info(
            E.SENTENCE_CITED,
            **fields,
            source_ids=[c.source_id for c in sentence.citations],
            unit_ids=[c.unit_id for c in sentence.citations],
            scores=[round(c.score, self.score_digits) for c in sentence.citations],
        )

    def on_generation_end(self, info: GenerationInfo, answer: TracedAnswer) -> None:
        seconds = answer.timings.get("total_s", answer.timings.get("attribution_s"))
        self._log.info(
            E.GENERATION_FINISHED,
            run_id=info.run_id,
            operation=info.operation,
            model=answer.model,
            prompt_tokens=answer.prompt_tokens,
            generated_tokens=answer.generated_tokens,
            sentences=len(answer.sentences),
            grounded_sentences=sum(1 for s in answer.sentences if s.grounded),
            cited_source_ids=answer.cited_source_ids,
            finish_reason=answer.finish_reason,
            seconds=seconds,
            tokens_per_second=(answer.generated_tokens / seconds) if seconds else None,
            timings=dict(answer.timings),
        )
        if answer.errors:
            self._log.warning(E.ATTRIBUTION_DEGRADED, run_id=info.run_id, errors=list(answer.errors))

    def on_generation_error(self, info: GenerationInfo, error: BaseException) -> None:
        self._log.error(
            E.GENERATION_FAILED,
            run_id=info.run_id,
            operation=info.operation,
            model=info.model,
            error_type=type(error).__qualname__,
            error=str(error),
        )
