"""Answering without sources: plain decoding with the same model (nothing to cite)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omnitrace_core import ContextLengthError, TextDelta


@dataclass(frozen=True)
class PlainFinal:
    """The end of an answer without sources."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    model: str


def plain_stream(
    tracer: Any, turns: list[dict[str, str]], gen: dict[str, Any]
) -> Iterator[TextDelta | PlainFinal]:
    """Decode the conversation with the tracer's model, yielding text deltas then :class:`PlainFinal`."""
    import torch

    tokenizer, model = tracer.tokenizer, tracer.model
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    defaults = tracer.config.generation
    kwargs: dict[str, Any] = {
        "max_new_tokens": defaults.max_new_tokens,
        "no_repeat_ngram_size": defaults.no_repeat_ngram_size,
        "do_sample": defaults.do_sample,
        **gen,
    }
    if not kwargs.get("do_sample"):
        for key in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(key, None)
    window = int(tracer.loaded.context_window)
    if len(input_ids) + int(kwargs["max_new_tokens"]) > window:
        raise ContextLengthError(
            f"prompt is {len(input_ids)} tokens and {kwargs['max_new_tokens']} new tokens are requested: "
            f"more than the model's context window of {window}. Shorten the conversation or lower max_tokens."
        )
    ids_q: queue.Queue[int | None] = queue.Queue()
    failure: list[BaseException] = []

    class _Streamer:
        seen_prompt = False

        def put(self, value: Any) -> None:
            if not self.seen_prompt:
                self.seen_prompt = True
                return
            for tok in value.reshape(-1).tolist():
                ids_q.put(int(tok))

        def end(self) -> None:
            ids_q.put(None)

    tensor = torch.tensor([input_ids], device=model.device)

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    input_ids=tensor,
                    attention_mask=torch.ones_like(tensor),
                    streamer=_Streamer(),
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    **kwargs,
                )
        except BaseException as exc:
            failure.append(exc)
        finally:
            ids_q.put(None)

    worker = threading.Thread(target=work, name="omnitrace-serve-plain", daemon=True)
    worker.start()
    special = set(tokenizer.all_special_ids)
    ids: list[int] = []
    text, steps, finish = "", 0, "length"
    while (tok := ids_q.get()) is not None:
        steps += 1
        if tok in special:
            finish = "stop"
            continue
        ids.append(tok)
        new_text = tokenizer.decode(ids, skip_special_tokens=True)
        if not new_text.endswith("\ufffd") and new_text != text:
            yield TextDelta(text=new_text[len(text) :], token_index=len(ids) - 1)
            text = new_text
    worker.join()
    if failure:
        raise failure[0]
    final = tokenizer.decode(ids, skip_special_tokens=True)
    if final != text:
        yield TextDelta(text=final[len(text) :], token_index=len(ids) - 1)
    yield PlainFinal(final, len(input_ids), steps, finish, str(tracer.loaded.name))
