"""Short prompt labels for sources, mapped back to the caller's ids in every result.

The core shows each source to the model as ``[id] title``. Node ids are UUIDs: 36 characters
of noise that a small model copies into its answer. :class:`SourceLabels` shows ``doc1``,
``doc2``... instead and rewrites the results so every id is the caller's again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omnitrace_core import SentenceAttribution, TracedAnswer
from omnitrace_core.sources import Source


class SourceLabels:
    """A bijection between prompt labels and source ids.

    Args:
        sources: The caller's sources.
        short: Use ``doc1``, ``doc2``... in the prompt; when False the ids are shown unchanged.
    """

    def __init__(self, sources: Sequence[Source], short: bool = True) -> None:
        self.to_id: dict[str, str] = {}
        self.labelled: list[Source] = []
        taken = {s.id for s in sources}
        n = 0
        for src in sources:
            label = src.id
            if short:
                n += 1
                label = f"doc{n}"
                while label in taken and label != src.id:
                    n += 1
                    label = f"doc{n}"
            self.to_id[label] = src.id
            self.labelled.append(src if label == src.id else src.model_copy(update={"id": label}))

    @property
    def identity(self) -> bool:
        return all(k == v for k, v in self.to_id.items())

    def _sid(self, label: str | None) -> str | None:
        return None if label is None else self.to_id.get(label, label)

    def _uid(self, unit: str | None) -> str | None:
        if unit is None:
            return None
        label, sep, rest = unit.partition("#")
        return f"{self.to_id.get(label, label)}{sep}{rest}"

    def _sentence(self, s: dict[str, Any]) -> dict[str, Any]:
        for c in s["citations"]:
            c["source_id"] = self._sid(c["source_id"])
            c["unit_id"] = self._uid(c["unit_id"])
        s["source_mass"] = {self._sid(k): v for k, v in s["source_mass"].items()}
        return s

    def sentence(self, sentence: SentenceAttribution) -> SentenceAttribution:
        """The sentence with the caller's ids."""
        if self.identity:
            return sentence
        return SentenceAttribution.model_validate(self._sentence(sentence.model_dump()))

    def answer(self, answer: TracedAnswer) -> TracedAnswer:
        """The answer with the caller's ids everywhere (citations, masses, tokens, sources)."""
        if self.identity:
            return answer
        data = answer.model_dump()
        data["sentences"] = [self._sentence(s) for s in data["sentences"]]
        for t in data["tokens"]:
            t["source_id"] = self._sid(t["source_id"])
            t["unit_id"] = self._uid(t["unit_id"])
        for src in data["sources"]:
            src["id"] = self._sid(src["id"])
            for u in src["units"]:
                u["source_id"] = self._sid(u["source_id"])
                u["unit_id"] = self._uid(u["unit_id"])
        return TracedAnswer.model_validate(data)
