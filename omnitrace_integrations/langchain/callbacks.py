"""``OmniTraceCallbackHandler``: collect per-sentence citations from any chain or agent run."""

from __future__ import annotations

import logging
import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, ConfigDict, Field

from omnitrace_core import TracedAnswer
from omnitrace_integrations.langchain.citations import citations_by_sentence, traced_answer

logger = logging.getLogger("omnitrace.langchain")

_CITATION_EVENT = "omnitrace_citation"  # == chat_model.CITATION_EVENT (kept import-light)


class CitedRun(BaseModel):
    """What one chat-model run cited.

    Attributes:
        run_id: The chat model run.
        parent_run_id: The run that called it (a chain, agent step, tool...), if any.
        root_run_id: The outermost run of the tree it belongs to.
        sentences: Completed sentences as announced while decoding (the ``omnitrace_citation``
            event payloads: ``{"sentence": ..., "annotations": [...], "grounded": bool}``).
        message: The final message (when the run ended).
        answer: The full core result (when the run ended and carried one).
        error: The error, if the run failed.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    run_id: UUID
    parent_run_id: UUID | None = None
    root_run_id: UUID
    sentences: list[dict[str, Any]] = Field(default_factory=list)
    message: AIMessage | None = None
    answer: TracedAnswer | None = None
    error: str | None = None

    @property
    def citations(self) -> list[dict[str, Any]]:
        """Cited spans of the final message (see :func:`citations_by_sentence`), else as announced."""
        if self.message is not None:
            return citations_by_sentence(self.message)
        out = []
        for s in self.sentences:
            sent = s.get("sentence", {})
            if s.get("annotations"):
                out.append(
                    {
                        "start": sent.get("char_start"),
                        "end": sent.get("char_end"),
                        "text": sent.get("text"),
                        "citations": s["annotations"],
                    }
                )
        return out


class OmniTraceCallbackHandler(BaseCallbackHandler):
    """Collects per-sentence citations from chat-model runs anywhere in a chain or agent.

    Works for sync and async runs (LangChain calls its sync methods from both), keyed by
    run id. Citations are recorded as they are announced (``omnitrace_citation`` events and
    streamed annotation chunks) and replaced by the final message when the run ends. It
    never raises into the chain (``raise_error = False``).

    Example:
        .. code-block:: python

            handler = OmniTraceCallbackHandler()
            answer = chain.invoke(question, config={"callbacks": [handler]})
            for run in handler.runs_under(handler.root_run_ids[-1]):
                print(run.citations)
    """

    raise_error: bool = False
    run_inline: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._parents: dict[UUID, UUID | None] = {}
        self._runs: dict[UUID, CitedRun] = {}
        self._roots: list[UUID] = []

    # -- queries ----------------------------------------------------------------------------
    @property
    def runs(self) -> dict[UUID, CitedRun]:
        """Every chat-model run seen, by run id (in start order)."""
        with self._lock:
            return dict(self._runs)

    @property
    def root_run_ids(self) -> list[UUID]:
        """Outermost run ids, in start order (e.g. one per ``chain.invoke``)."""
        with self._lock:
            return list(self._roots)

    def runs_under(self, run_id: UUID) -> list[CitedRun]:
        """The chat-model runs at or below ``run_id`` (a chain, agent or the model run itself)."""
        with self._lock:
            return [
                r
                for r in self._runs.values()
                if r.run_id == run_id or self._is_below(r.run_id, run_id)
            ]

    def last(self) -> CitedRun | None:
        """The most recently started chat-model run."""
        with self._lock:
            return next(reversed(self._runs.values()), None)

    def clear(self) -> None:
        """Forget everything collected."""
        with self._lock:
            self._parents.clear()
            self._runs.clear()
            self._roots.clear()

    # -- tree -------------------------------------------------------------------------------
    def _is_below(self, run_id: UUID, ancestor: UUID) -> bool:
        seen = 0
        current = self._parents.get(run_id)
        while current is not None and seen < 10_000:
            if current == ancestor:
                return True
            current = self._parents.get(current)
            seen += 1
        return False

    def _root(self, run_id: UUID) -> UUID:
        current = run_id
        for _ in range(10_000):
            parent = self._parents.get(current)
            if parent is None:
                return current
            current = parent
        return current

    def _register(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            if run_id not in self._parents:
                self._parents[run_id] = parent_run_id
                if parent_run_id is None:
                    self._roots.append(run_id)

    # -- LangChain hooks --------------------------------------------------------------------
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kw: Any,
    ) -> None:
        self._register(run_id, parent_run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kw: Any,
    ) -> None:
        self._register(run_id, parent_run_id)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kw: Any,
    ) -> None:
        self._register(run_id, parent_run_id)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kw: Any,
    ) -> None:
        self._register(run_id, parent_run_id)
        with self._lock:
            self._runs[run_id] = CitedRun(
                run_id=run_id, parent_run_id=parent_run_id, root_run_id=self._root(run_id)
            )

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kw: Any) -> None:
        if name != _CITATION_EVENT or not isinstance(data, dict):
            return
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:  # the event's payload is fuller than a streamed chunk's: replace it
                index = data.get("sentence", {}).get("index")
                run.sentences = [
                    s for s in run.sentences if s.get("sentence", {}).get("index") != index
                ]
                run.sentences.append(data)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kw: Any) -> None:
        """Streamed annotation chunks announce citations when no custom event can be dispatched."""
        message = getattr(chunk, "message", None)
        if message is None or not isinstance(message.content, list):
            return
        for block in message.content:
            if not (
                isinstance(block, dict) and block.get("type") == "text" and block.get("annotations")
            ):
                continue
            with self._lock:
                run = self._runs.get(run_id)
                if run is None:
                    continue
                anns = list(block["annotations"])
                index = (anns[0].get("extras") or {}).get("sentence_index")
                if any(s.get("sentence", {}).get("index") == index for s in run.sentences):
                    continue  # already announced by the custom event
                start, end = anns[0].get("start_index"), anns[0].get("end_index")
                run.sentences.append(
                    {
                        "sentence": {
                            "index": index,
                            "char_start": start,
                            "char_end": end,
                            "text": None,
                        },
                        "annotations": anns,
                        "grounded": True,
                    }
                )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kw: Any) -> None:
        try:
            generation = (
                response.generations[0][0]
                if response.generations and response.generations[0]
                else None
            )
            message = generation.message if isinstance(generation, ChatGeneration) else None
            answer = traced_answer(message) if message is not None else None
        except Exception as exc:  # never break the chain
            logger.warning("OmniTraceCallbackHandler could not read the result: %r", exc)
            return
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            if isinstance(message, AIMessage):
                run.message = message
            run.answer = answer

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.error = repr(error)
