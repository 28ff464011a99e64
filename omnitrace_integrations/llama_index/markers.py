"""``[n]`` markers placed after each sentence from its curated citations.

Markers are numbered by first citation: ``[1]`` is the first node any sentence cites, and
``Response.source_nodes[n - 1]`` is the node behind ``[n]``. A marker is only ever produced
for a cited source id known to the caller, so there is never a marker without a node.

The same placer serves whole answers and streams. While streaming, text after the first
sentence terminator of the not-yet-cited tail is held back until that sentence is cited, so
its marker lands right after it and the streamed text equals the non-streaming text.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from omnitrace_core import SentenceAttribution, TracedAnswer

_TERMINATORS = (".", "!", "?", "\n", "。")


class MarkerPlacer:
    """Numbers cited sources and inserts markers into an answer (whole or streamed).

    Args:
        known: Source ids that may be cited (the retrieved nodes); a citation of anything
            else is dropped and recorded in ``dropped``.
        template: Format of one marker; ``{n}`` is the number.
    """

    def __init__(self, known: Container[str], template: str = "[{n}]") -> None:
        self.known = known
        self.template = template
        self.numbers: dict[str, int] = {}
        self.dropped: list[str] = []
        self.sentence_markers: list[list[int]] = []
        self._raw = ""
        self._emitted = 0
        self._committed = 0
        self.late_markers = 0

    # -- numbering -------------------------------------------------------------------------
    def markers_for(self, sentence: SentenceAttribution) -> list[int]:
        """Numbers cited by ``sentence`` (in citation order, each once); numbers new sources."""
        out: list[int] = []
        for c in sentence.citations:
            if c.source_id not in self.known:
                self.dropped.append(c.source_id)
                continue
            n = self.numbers.setdefault(c.source_id, len(self.numbers) + 1)
            if n not in out:
                out.append(n)
        return out

    def marker_text(self, numbers: list[int]) -> str:
        return (" " + "".join(self.template.format(n=n) for n in numbers)) if numbers else ""

    # -- whole answers -----------------------------------------------------------------------
    def mark(self, answer: TracedAnswer) -> str:
        """The answer text with each sentence's markers right after it."""
        pieces: list[str] = []
        pos = 0
        for s in answer.sentences:
            numbers = self.markers_for(s)
            self.sentence_markers.append(numbers)
            end = max(s.char_end, pos)
            pieces.append(answer.text[pos:end] + self.marker_text(numbers))
            pos = end
        pieces.append(answer.text[pos:])
        return "".join(pieces)

    # -- streams -------------------------------------------------------------------------------
    def feed_text(self, delta: str) -> str:
        """Add streamed answer text; return what can be shown now."""
        self._raw += delta
        return self._release()

    def feed_sentence(
        self, sentence: SentenceAttribution, on_numbers: Callable[[list[int]], None] | None = None
    ) -> str:
        """A sentence is complete: return the held text up to its end plus its markers."""
        numbers = self.markers_for(sentence)
        self.sentence_markers.append(numbers)
        if on_numbers is not None:
            on_numbers(numbers)
        out = ""
        if sentence.char_end >= self._emitted:
            out = self._raw[self._emitted : sentence.char_end]
            self._emitted = sentence.char_end
        elif numbers:
            self.late_markers += 1  # the splitter ended a sentence inside text already shown
        out += self.marker_text(numbers)
        self._committed = max(self._committed, sentence.char_end)
        return out + self._release()

    def finish(self, final_text: str) -> str:
        """The stream ended: return whatever is still held."""
        if final_text.startswith(self._raw):
            self._raw = final_text
        out = self._raw[self._emitted :]
        self._emitted = len(self._raw)
        return out

    def _release(self) -> str:
        tail = self._raw[self._committed :]
        lead = len(tail) - len(tail.lstrip())  # whitespace between sentences is not an ending
        hits = [i for i in (tail.find(t, lead) for t in _TERMINATORS) if i >= 0]
        limit = self._committed + min(hits) if hits else len(self._raw)
        if limit <= self._emitted:
            return ""
        out = self._raw[self._emitted : limit]
        self._emitted = limit
        return out
