"""Stable structlog event names and the logger name (documented in ``docs/observability.md``).

All events go to ``structlog.get_logger("omnitrace")`` with key-value fields; the library never
configures structlog or the root logger.
"""

from __future__ import annotations

from typing import Final

LOGGER_NAME: Final = "omnitrace"

MODEL_LOADED: Final = "model_loaded"
"""info: a model is ready (fields: model, seconds, source). Emitted by the core (see report)."""
GENERATION_STARTED: Final = "generation_started"
"""info: run_id, operation, model, signal, source_ids, prompt_tokens, request."""
SENTENCE_CITED: Final = "sentence_cited"
"""info: run_id, index, char_start, char_end, grounded, source_ids, unit_ids, scores."""
CURATION_EMPTY: Final = "curation_empty"
"""warning: a sentence got no citation (nothing the model read supports it)."""
GENERATION_FINISHED: Final = "generation_finished"
"""info: run_id, model, prompt_tokens, generated_tokens, sentences, grounded_sentences,
finish_reason, seconds, tokens_per_second, timings."""
ATTRIBUTION_DEGRADED: Final = "attribution_degraded"
"""warning: the answer came back with recorded failures (``TracedAnswer.errors``)."""
GENERATION_FAILED: Final = "generation_failed"
"""error: run_id, error_type, error."""
OBSERVER_FAILED: Final = "observer_failed"
"""error: an observer raised (the answer is unaffected). Emitted by the core (see report)."""
EXPORTER_FAILED: Final = "exporter_failed"
"""error: a span exporter raised or reported failure (spans dropped, answer unaffected)."""
INPUT_REJECTED: Final = "input_rejected"
"""warning: bad input refused before running (reason). Emitted by the core (see report)."""
