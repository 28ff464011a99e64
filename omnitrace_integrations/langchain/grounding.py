"""``GroundingCheck``: a Runnable that judges a cited answer and annotates, raises or retries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, Field, model_validator

from omnitrace_core import OmniTraceError
from omnitrace_core.grounding import (
    GroundingThresholds,
    GroundingVerdict,
    assess_grounding,
)
from omnitrace_integrations.langchain.citations import traced_answer

Mode = Literal["annotate", "raise", "retry"]

#: Follow-up instruction for a retry; ``{sentences}`` lists the unsupported sentences.
RETRY_INSTRUCTION = (
    "Some sentences of your previous answer are not supported by the sources:\n{sentences}\n"
    "Answer the question again using only facts stated in the sources, and leave those claims out."
)


class UngroundedAnswerError(OmniTraceError, ValueError):
    """An answer has sentences no source supports.

    Attributes:
        message: The checked answer (annotated with its verdict).
        verdict: The grounding verdict.
        sentences: The unsupported sentences' texts.
    """

    def __init__(self, message: AIMessage, verdict: GroundingVerdict) -> None:
        self.message = message
        self.verdict = verdict
        self.sentences = [s.text for s in verdict.unsupported]
        listing = "; ".join(
            f"#{s.index} {s.text!r} (score {s.score:.2f})" for s in verdict.unsupported
        )
        super().__init__(f"{len(self.sentences)} unsupported sentence(s): {listing}")


def annotate(message: AIMessage, verdict: GroundingVerdict, attempts: int = 1) -> AIMessage:
    """A copy of ``message`` with ``response_metadata["grounding"]`` set to the verdict."""
    meta = dict(message.response_metadata)
    meta["grounding"] = {
        "grounded": verdict.grounded,
        "score": verdict.score,
        "attempts": attempts,
        "unsupported": [s.index for s in verdict.unsupported],
        "weak": [s.index for s in verdict.weak],
        "sentences": [s.model_dump(mode="json") for s in verdict.sentences],
        "thresholds": verdict.thresholds.model_dump(mode="json"),
    }
    return message.model_copy(update={"response_metadata": meta})


def _messages(value: Any) -> list[BaseMessage]:
    if isinstance(value, str):
        return [HumanMessage(value)]
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Sequence):
        return convert_to_messages(value)
    raise TypeError(f"cannot read messages from {type(value).__name__}")


class GroundingCheck(RunnableSerializable[Any, AIMessage]):
    """Checks that every sentence of a cited answer is supported by its sources.

    Three modes:

    - ``annotate``: return the message with ``response_metadata["grounding"]`` (the verdict:
      per sentence label, score, signals; ``grounded``; ``unsupported`` indices).
    - ``raise``: like annotate, but raise :class:`UngroundedAnswerError` (listing the
      sentences) when any sentence is unsupported.
    - ``retry``: re-ask the model (at most ``max_retries`` times) with a follow-up that names
      the unsupported sentences; return the best attempt (fewest unsupported sentences, then
      highest score) with its verdict and the number of attempts.

    Input: an ``AIMessage`` from ``ChatOmniTrace`` (``annotate`` / ``raise`` without ``llm``),
    or, with ``llm`` set, the model's input: a string, messages, a prompt value, or a dict
    ``{"question": ..., "sources": [Document, ...]}`` (``messages`` may replace ``question``).

    Example:
        .. code-block:: python

            check = GroundingCheck(llm=ChatOmniTrace(max_tokens=64), mode="retry")
            chain = {"question": RunnablePassthrough(), "sources": retriever} | check
            msg = chain.invoke("When was Valbrook Works founded?")
            print(msg.response_metadata["grounding"]["grounded"])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Runnable[Any, Any] | None = None
    mode: Mode = "annotate"
    max_retries: int = Field(2, ge=0, le=10)
    thresholds: GroundingThresholds | None = None
    """``None``: the model's own (a calibrated model's), else the library defaults."""
    retry_instruction: str = RETRY_INSTRUCTION

    @model_validator(mode="after")
    def _needs_llm(self) -> GroundingCheck:
        if self.mode == "retry" and self.llm is None:
            raise ValueError("mode='retry' needs llm= (the model to ask again)")
        return self

    # -- pieces -----------------------------------------------------------------------------
    def verdict(self, message: AIMessage) -> GroundingVerdict:
        """The verdict on a message from ``ChatOmniTrace``.

        Raises:
            ValueError: if the message carries no OmniTrace attribution (e.g. no sources).
        """
        answer = traced_answer(message)
        if answer is None:
            raise ValueError(
                "the message carries no OmniTrace attribution (response_metadata['omnitrace']): "
                "it was not produced by ChatOmniTrace with sources"
            )
        return assess_grounding(answer, self.thresholds)

    def _split(self, value: Any) -> tuple[list[BaseMessage], dict[str, Any]]:
        if isinstance(value, dict):
            kwargs = {"sources": value["sources"]} if "sources" in value else {}
            body = value.get("messages", value.get("question"))
            if body is None:
                raise ValueError(
                    "dict input needs 'question' or 'messages' (and usually 'sources')"
                )
            return _messages(body), kwargs
        return _messages(value), {}

    def _follow_up(
        self, messages: list[BaseMessage], message: AIMessage, verdict: GroundingVerdict
    ) -> list[BaseMessage]:
        listing = "\n".join(f"- {s.text}" for s in verdict.unsupported)
        previous = AIMessage(content=message.text)
        return [*messages, previous, HumanMessage(self.retry_instruction.format(sentences=listing))]

    @staticmethod
    def _better(
        a: tuple[AIMessage, GroundingVerdict], b: tuple[AIMessage, GroundingVerdict]
    ) -> bool:
        return (len(a[1].unsupported), -a[1].score) < (len(b[1].unsupported), -b[1].score)

    def _finish(self, message: AIMessage, verdict: GroundingVerdict, attempts: int) -> AIMessage:
        annotated = annotate(message, verdict, attempts)
        if self.mode == "raise" and not verdict.grounded:
            raise UngroundedAnswerError(annotated, verdict)
        return annotated

    # -- sync -------------------------------------------------------------------------------
    def _check(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> AIMessage:
        if isinstance(value, AIMessage):
            return self._finish(value, self.verdict(value), 1)
        if self.llm is None:
            raise TypeError(
                f"GroundingCheck without llm= expects an AIMessage, got {type(value).__name__}"
            )
        messages, kwargs = self._split(value)
        child = patch_config(config, callbacks=run_manager.get_child())
        message = self.llm.invoke(messages, child, **kwargs)
        best = (message, self.verdict(message))
        attempts = 1
        while self.mode == "retry" and not best[1].grounded and attempts <= self.max_retries:
            follow = self._follow_up(messages, best[0], best[1])
            message = self.llm.invoke(follow, child, **kwargs)
            attempts += 1
            candidate = (message, self.verdict(message))
            if self._better(candidate, best):
                best = candidate
        return self._finish(best[0], best[1], attempts)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return self._call_with_config(self._check, input, config, run_type="chain")

    # -- async ------------------------------------------------------------------------------
    async def _acheck(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> AIMessage:
        if isinstance(value, AIMessage):
            return self._finish(value, self.verdict(value), 1)
        if self.llm is None:
            raise TypeError(
                f"GroundingCheck without llm= expects an AIMessage, got {type(value).__name__}"
            )
        messages, kwargs = self._split(value)
        child = patch_config(config, callbacks=run_manager.get_child())
        message = await self.llm.ainvoke(messages, child, **kwargs)
        best = (message, self.verdict(message))
        attempts = 1
        while self.mode == "retry" and not best[1].grounded and attempts <= self.max_retries:
            message = await self.llm.ainvoke(
                self._follow_up(messages, best[0], best[1]), child, **kwargs
            )
            attempts += 1
            candidate = (message, self.verdict(message))
            if self._better(candidate, best):
                best = candidate
        return self._finish(best[0], best[1], attempts)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return await self._acall_with_config(self._acheck, input, config, run_type="chain")
