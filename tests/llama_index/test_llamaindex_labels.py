"""Short prompt labels never leak: every id in a result is the caller's."""

from __future__ import annotations

from llamaindex_fakes import FakeTracer

from omnitrace_core import TextSource, TracerConfig
from omnitrace_integrations.llama_index.labels import SourceLabels


def test_results_carry_the_callers_ids() -> None:
    sources = [
        TextSource(id="3f2a9c1e-uuid-a", text="Alpha makes filters. It is old."),
        TextSource(id="8e7d6c5b-uuid-b", text="Beta makes motors."),
    ]
    labels = SourceLabels(sources)
    assert [s.id for s in labels.labelled] == ["doc1", "doc2"]
    answer = FakeTracer().generate(labels.labelled, "q?", config=TracerConfig(split_sources=True))
    back = labels.answer(answer)
    ids = {s.id for s in sources}
    assert {c.source_id for s in back.sentences for c in s.citations} == ids
    assert {c.unit_id.split("#")[0] for s in back.sentences for c in s.citations} == ids
    assert all(c.unit_id.endswith("#0") for s in back.sentences for c in s.citations)
    assert {k for s in back.sentences for k in s.source_mass} == ids
    assert [s.id for s in back.sources] == [s.id for s in sources]
    assert {u.source_id for s in back.sources for u in s.units} == ids
    assert labels.sentence(answer.sentences[0]) == back.sentences[0]


def test_labels_can_be_the_ids_themselves() -> None:
    sources = [TextSource(id="doc2", text="x."), TextSource(id="doc1", text="y.")]
    labels = SourceLabels(sources, short=False)
    assert labels.identity and labels.labelled == sources
