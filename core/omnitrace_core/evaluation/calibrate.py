"""``omnitrace calibrate``: learn a model's head weights and defaults from its own source ablations.

No labels: the targets are what removing sources does to the model's own responses. For each
calibration prompt (sources + question, optionally a response):

1. **Response**: the model's greedy answer (or the given one), split into sentences.
2. **Features** (one teacher-forced pass): for every (layer, head), the attention mass each
   response token puts on each source's token span (:class:`HeadMass`), averaged over each
   sentence's tokens.
3. **Targets** (``k`` teacher-forced passes, the faithfulness code's
   :func:`~omnitrace_core.evaluation.faithfulness.token_logprobs`): ``k`` random masks keep each
   source with probability 1/2; each sentence's log-probability under each mask.

**Fit** (the objective of AT2, Cohen-Wang et al. 2025, "Learning to Attribute with Attention"):
a non-negative weight per (layer, head), ``theta = softplus(phi)``; a sentence's score for
source ``j`` is ``s_j = sum_h theta_h * mass[h, j]`` and the surrogate of a mask ``m`` is
``sum_j m_j * s_j``. The loss is minus the Pearson correlation, across the masks, of the
surrogate with the sentence's actual log-probability, averaged over sentences; Adam, full
batch, early stopping on held-out prompts. The report compares held-out correlation with
uniform weights (AttMean) and the last layer (RawAtt).

**Defaults** chosen on the same data, against each sentence's *ablation effect* (least squares
of its log-probability on the masks: how much keeping each source raises it): the
position-bias correction and the curation's ``min_relative`` (the learned signal with each
candidate, scored by sentence F1 against the sources whose effect is large), and the grounding
verdict's thresholds (sentences made unsupported by removing their one supporting source,
against the same sentences with every source present).

Resumable: each prompt's features and targets are saved under ``OUT.parts/`` as they finish.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnitrace_core.calibration import Calibration, config_hash, head_shape
from omnitrace_core.capture import CaptureSession, capturing
from omnitrace_core.chunking import Chunker
from omnitrace_core.config import CurationConfig, MappingConfig, TracerConfig
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.evaluation.faithfulness import (
    prompt_ids,
    response_tokens,
    text_sources,
    token_logprobs,
    token_sentence_index,
)
from omnitrace_core.grounding import GroundingThresholds, assess_grounding
from omnitrace_core.mapping import UnitIndex
from omnitrace_core.signals import Signal
from omnitrace_core.sources import Source
from omnitrace_core.tracer import Tracer

Row = Mapping[str, Any]

#: A sentence depends on a source when keeping it raises the sentence's log-probability by at
#: least this many nats and by at least half the largest effect (the self-supervised "gold").
EFFECT_MIN_NATS = 1.0
EFFECT_RELATIVE = 0.5
#: A sentence whose largest effect is below this depends on no source (left out of the choice).
_EFFECT_FLOOR = 0.5


class HeadMass(Signal):
    """Records every (layer, head)'s attention mass on each unit; reduces like AttMean.

    Used for one teacher-forced pass per calibration prompt: ``store[layer]`` holds
    ``(heads, rows, units)`` for the captured rows in position order.
    """

    name = "head-mass"

    def __init__(self, owner: torch.Tensor, n_units: int) -> None:
        valid = owner >= 0
        onehot = torch.zeros(owner.shape[0], n_units)
        onehot[valid.nonzero()[:, 0], owner[valid]] = 1.0
        self.onehot = onehot
        self.store: dict[int, torch.Tensor] = {}

    def reduce(self, probs: torch.Tensor, layer_idx: int) -> torch.Tensor:
        end = self.onehot.shape[0]
        self.store[layer_idx] = (probs[..., :end] @ self.onehot.to(probs.device)).cpu()
        return probs.mean(dim=0)


@dataclass(frozen=True)
class Example:
    """One calibration prompt's features and ablation targets.

    Attributes:
        id: Prompt id.
        response: The response attributed.
        sentences: Character spans of its sentences.
        mass: ``(sentences, layers, heads, sources)`` mean attention mass of each sentence's tokens.
        masks: ``(k, sources)`` kept sources per ablation.
        logp: ``(k, sentences)`` each sentence's log-probability under each ablation.
        full: ``(sentences,)`` log-probabilities with every source.
        passes: Forward passes spent (features + distinct ablations).
        seconds: Wall time spent.
    """

    id: str
    response: str
    sentences: list[tuple[int, int]]
    mass: torch.Tensor
    masks: torch.Tensor
    logp: torch.Tensor
    full: torch.Tensor
    passes: int
    seconds: float

    def effects(self) -> torch.Tensor:
        """``(sentences, sources)``: least-squares log-prob gain of keeping each source."""
        m = self.masks.float()
        design = torch.cat([torch.ones(m.shape[0], 1), m], dim=1)
        coef = torch.linalg.lstsq(design, self.logp.float()).solution  # (1 + sources, sentences)
        return coef[1:].T.contiguous()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "response": self.response,
            "sentences": self.sentences,
            "mass": self.mass.half(),
            "masks": self.masks,
            "logp": self.logp,
            "full": self.full,
            "passes": self.passes,
            "seconds": self.seconds,
        }

    def to_part(self, settings: CalibrationSettings) -> dict[str, Any]:
        """:meth:`to_dict` plus the settings that produced it (a resumed run checks them)."""
        return {**self.to_dict(), "settings": _part_settings(settings)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(
            id=d["id"],
            response=d["response"],
            sentences=[tuple(s) for s in d["sentences"]],
            mass=d["mass"].float(),
            masks=d["masks"],
            logp=d["logp"],
            full=d["full"],
            passes=int(d["passes"]),
            seconds=float(d["seconds"]),
        )


def dependent_sources(effects: torch.Tensor) -> list[set[int]]:
    """Per sentence, the sources its log-probability depends on (see :data:`EFFECT_MIN_NATS`)."""
    out = []
    for row in effects.tolist():
        top = max(row) if row else 0.0
        out.append({j for j, e in enumerate(row) if e >= EFFECT_MIN_NATS and e >= EFFECT_RELATIVE * top})
    return out


# ---------------------------------------------------------------- collection


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Calibration prompts: JSONL rows with ``id``, ``sources`` (text) and ``question``.

    Raises:
        InvalidInputError: unreadable file, a malformed line or a row missing a field (named).
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read calibration prompts {p}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{p}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row.get("sources"):
            raise InvalidInputError(f"{p}:{number}: a calibration row needs 'sources' and a 'question'")
        row.setdefault("id", f"row-{number}")
        if str(row["id"]) in seen:
            raise InvalidInputError(f"{p}:{number}: duplicate id {row['id']!r}")
        seen.add(str(row["id"]))
        rows.append(row)
    if not rows:
        raise InvalidInputError(f"{p}: no calibration prompts")
    return rows


def collect_example(
    tracer: Tracer,
    row: Row,
    *,
    k: int = 32,
    seed: int = 0,
    max_new_tokens: int = 48,
    chunker: Chunker | None = None,
) -> Example | None:
    """Features and ablation targets of one prompt (``None``: empty response or one source)."""
    t0 = time.perf_counter()
    srcs = text_sources(row)
    if len(srcs) < 2:
        return None
    layout = tracer.layout(srcs, row["question"])
    response = row.get("response")
    if not isinstance(response, str) or not response.strip():
        response = tracer.generate(srcs, row["question"], max_new_tokens=max_new_tokens).text
    spans = (chunker or tracer.chunker).sentences(response)
    resp_ids, offsets = response_tokens(tracer.tokenizer, response)
    if not spans or not resp_ids:
        return None
    owner = torch.tensor(token_sentence_index(offsets, spans))
    mass = _sentence_mass(tracer, layout, resp_ids, owner, len(spans))
    rng = random.Random(f"{seed}-{row['id']}")
    masks = torch.tensor([[rng.random() < 0.5 for _ in srcs] for _ in range(k)], dtype=torch.bool)
    cache: dict[tuple[bool, ...], torch.Tensor] = {}
    question = row["question"]
    full = token_logprobs(tracer, layout.input_ids, resp_ids)
    cache[tuple([True] * len(srcs))] = full
    for m in masks.tolist():
        key = tuple(m)
        if key not in cache:
            kept = [s for s, keep in zip(srcs, m, strict=True) if keep]
            cache[key] = token_logprobs(tracer, prompt_ids(tracer, kept, question), resp_ids)
    per_mask = torch.stack([cache[tuple(m)] for m in masks.tolist()])  # (k, tokens)
    logp = torch.stack([per_mask[:, owner == j].sum(1) for j in range(len(spans))], dim=1)
    return Example(
        id=str(row["id"]),
        response=response,
        sentences=[(int(a), int(b)) for a, b in spans],
        mass=mass,
        masks=masks,
        logp=logp,
        full=torch.stack([full[owner == j].sum() for j in range(len(spans))]),
        passes=1 + len(cache),
        seconds=time.perf_counter() - t0,
    )


def _sentence_mass(
    tracer: Tracer, layout: Any, resp_ids: list[int], owner: torch.Tensor, n_sentences: int
) -> torch.Tensor:
    index = UnitIndex(layout.units, tracer.config.mapping.exclude_first_positions)
    recorder = HeadMass(index.owner, len(layout.units))
    prompt_len = len(layout.input_ids)
    positions = list(range(prompt_len - 1, prompt_len - 1 + len(resp_ids)))
    session = CaptureSession(recorder, tracer.loaded.num_layers, prefill_positions=positions)
    ids = torch.tensor([layout.input_ids + resp_ids], device=tracer.model.device)
    with capturing(session), torch.no_grad():
        tracer.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    stacked = torch.stack([recorder.store[i] for i in sorted(recorder.store)])  # (L, H, R, U)
    per_token = stacked.permute(2, 0, 1, 3)  # (R, L, H, U)
    return torch.stack([per_token[owner == j].mean(0) for j in range(n_sentences)])


# ---------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitReport:
    """Held-out quality of the fitted weights (Pearson correlation of surrogate and log-prob)."""

    train_sentences: int
    heldout_sentences: int
    heldout_corr_learned: float
    heldout_corr_uniform: float
    heldout_corr_last_layer: float
    epochs: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _design(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked ``(n, L*H, U)`` features, ``(n, k, U)`` masks and ``(n, k)`` targets (padded U)."""
    feats, masks, ys = [], [], []
    width = max(int(e.masks.shape[1]) for e in examples)
    for e in examples:
        n_src = int(e.masks.shape[1])
        for j in range(len(e.sentences)):
            y = e.logp[:, j].float()
            if float(y.std()) < 1e-3:  # the sentence does not react to any source
                continue
            f = torch.zeros(e.mass.shape[1] * e.mass.shape[2], width)
            f[:, :n_src] = e.mass[j].reshape(-1, n_src)
            m = torch.zeros(e.masks.shape[0], width)
            m[:, :n_src] = e.masks.float()
            feats.append(f)
            masks.append(m)
            ys.append(y)
    if not feats:
        raise InvalidInputError("no calibration sentence reacts to removing a source: nothing to fit")
    return torch.stack(feats), torch.stack(masks), torch.stack(ys)


def _pearson(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pc = pred - pred.mean(1, keepdim=True)
    yc = y - y.mean(1, keepdim=True)
    return (pc * yc).mean(1) / (pc.pow(2).mean(1).sqrt() * yc.pow(2).mean(1).sqrt() + 1e-8)


def _corr(theta: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    feat, mask, y = data
    scores = torch.einsum("f,nfu->nu", theta, feat)
    return _pearson(torch.einsum("nku,nu->nk", mask, scores), y).mean()


def fit_head_weights(
    examples: Sequence[Example],
    *,
    seed: int = 0,
    heldout: float = 0.2,
    lr: float = 0.05,
    max_epochs: int = 600,
    patience: int = 60,
) -> tuple[torch.Tensor, FitReport]:
    """Non-negative ``(layers, heads)`` weights maximising held-out surrogate correlation."""
    t0 = time.perf_counter()
    layers, heads = int(examples[0].mass.shape[1]), int(examples[0].mass.shape[2])
    ids = sorted({e.id for e in examples})
    random.Random(seed).shuffle(ids)
    n_held = max(1, round(len(ids) * heldout)) if len(ids) > 1 else 0
    held_ids = set(ids[:n_held])
    train = _design([e for e in examples if e.id not in held_ids])
    held = _design([e for e in examples if e.id in held_ids]) if held_ids else train
    uniform = torch.ones(layers * heads)
    last = torch.zeros(layers, heads)
    last[-1] = 1.0
    torch.manual_seed(seed)
    # softplus(phi) = 1 at phi = log(e - 1): start from AttMean
    phi = torch.full((layers * heads,), math.log(math.e - 1), requires_grad=True)
    opt = torch.optim.Adam([phi], lr=lr)
    best, best_phi, since, epoch = -2.0, phi.detach().clone(), 0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007 - reported
        opt.zero_grad()
        loss = -_corr(torch.nn.functional.softplus(phi), train)
        loss.backward()
        opt.step()
        with torch.no_grad():
            score = float(_corr(torch.nn.functional.softplus(phi), held))
        if score > best + 1e-5:
            best, best_phi, since = score, phi.detach().clone(), 0
        else:
            since += 1
            if since >= patience:
                break
    theta = torch.nn.functional.softplus(best_phi)
    with torch.no_grad():
        report = FitReport(
            train_sentences=int(train[0].shape[0]),
            heldout_sentences=int(held[0].shape[0]) if held_ids else 0,
            heldout_corr_learned=float(_corr(theta, held)),
            heldout_corr_uniform=float(_corr(uniform, held)),
            heldout_corr_last_layer=float(_corr(last.flatten(), held)),
            epochs=epoch,
            seconds=time.perf_counter() - t0,
        )
    return (theta / theta.sum()).reshape(layers, heads), report


# ---------------------------------------------------------------- defaults


def _sentence_f1(cited: Iterable[set[int]], gold: Iterable[set[int]]) -> float:
    tp = fp = fn = 0
    for c, g in zip(cited, gold, strict=True):
        tp += len(c & g)
        fp += len(c - g)
        fn += len(g - c)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def choose_defaults(
    tracer: Tracer,
    rows: Mapping[str, Row],
    examples: Sequence[Example],
    signal: Signal,
    *,
    corrections: Sequence[str] = ("none", "prompt", "running", "both"),
    min_relatives: Sequence[float] = (0.3, 0.5, 0.7),
) -> tuple[MappingConfig, CurationConfig, dict[str, Any]]:
    """The bias correction and ``min_relative`` whose citations best match the ablation effects."""
    base = TracerConfig()
    gold: list[set[int]] = []
    cited: dict[tuple[str, float], list[set[int]]] = {(c, r): [] for c in corrections for r in min_relatives}
    for ex in examples:
        row = rows[ex.id]
        effects = ex.effects()
        deps = dependent_sources(effects)
        keep = [j for j in range(len(ex.sentences)) if float(effects[j].max()) >= _EFFECT_FLOOR]
        srcs: list[Source] = list(text_sources(row))
        order = {s.id: i for i, s in enumerate(srcs)}
        layout = tracer.layout(srcs, row["question"])
        forced = tracer.forced_rows(layout, ex.response, signal)
        for corr in corrections:
            for rel in min_relatives:
                cfg = base.model_copy(
                    update={
                        "signal": signal.name,
                        "mapping": base.mapping.model_copy(update={"bias_correction": corr}),
                        "curation": base.curation.model_copy(update={"min_relative": rel}),
                    }
                )
                answer = tracer.assemble_forced(list(srcs), layout, forced, cfg)
                by_span = {(s.char_start, s.char_end): s for s in answer.sentences}
                for j in keep:
                    s = by_span.get(ex.sentences[j])
                    cited[(corr, rel)].append({order[c.source_id] for c in s.citations} if s else set())
        gold.extend(deps[j] for j in keep)
    f1 = {key: _sentence_f1(v, gold) for key, v in cited.items()}
    scores = {f"{c}/{r}": round(v, 4) for (c, r), v in f1.items()}
    (corr, rel) = max(f1, key=lambda key: (f1[key], key == ("both", 0.5)))
    mapping = base.mapping.model_copy(update={"bias_correction": corr})
    curation = base.curation.model_copy(update={"min_relative": rel})
    return mapping, curation, {"sentences": len(gold), "f1_by_correction_min_relative": scores}


def choose_grounding(
    tracer: Tracer,
    rows: Mapping[str, Row],
    examples: Sequence[Example],
    config: TracerConfig,
    *,
    weights: Sequence[float] = (0.0, 0.25, 0.5),
) -> tuple[GroundingThresholds, dict[str, Any]]:
    """Grounding thresholds that separate supported sentences from ones made unsupported.

    For each prompt, every sentence that depends on exactly one source is attributed twice:
    with all sources (supported) and with that source removed (unsupported). The weak /
    unsupported boundary is the score that maximises the unsupported class's F1.
    """
    pairs: list[tuple[float, float, bool]] = []  # (attention, similarity, unsupported)
    for ex in examples:
        row = rows[ex.id]
        srcs = text_sources(row)
        deps = dependent_sources(ex.effects())
        single = [(j, next(iter(d))) for j, d in enumerate(deps) if len(d) == 1]
        if not single:
            continue
        j, src = single[0]
        for unsupported, kept in ((False, srcs), (True, [s for i, s in enumerate(srcs) if i != src])):
            answer = tracer.attribute(kept, row["question"], ex.response, config=config)
            verdict = assess_grounding(answer, GroundingThresholds(attention_weight=0.5))
            span = ex.sentences[j]
            for v in verdict.sentences:
                if (v.char_start, v.char_end) == tuple(span):
                    pairs.append((v.attention, v.similarity, unsupported))
    if len(pairs) < 4 or len({p[2] for p in pairs}) < 2:
        return GroundingThresholds(), {"pairs": len(pairs), "chosen": "library defaults (too few pairs)"}
    best: tuple[float, float, float] = (-1.0, 0.25, 0.55)
    for w in weights:
        scores = sorted({round(w * a + (1 - w) * s, 3) for a, s, _ in pairs})
        for t in scores:
            flagged = [(w * a + (1 - w) * s) < t for a, s, _ in pairs]
            tp = sum(f and u for f, (_, _, u) in zip(flagged, pairs, strict=True))
            fp = sum(f and not u for f, (_, _, u) in zip(flagged, pairs, strict=True))
            fn = sum((not f) and u for f, (_, _, u) in zip(flagged, pairs, strict=True))
            f1 = 2 * tp / max(1, 2 * tp + fp + fn)
            if f1 > best[0]:
                best = (f1, w, t)
    f1, w, t = best
    t = min(max(t, 0.0), 1.0)
    thresholds = GroundingThresholds(attention_weight=w, weak_min=t, supported_min=min(1.0, t + 0.15))
    return thresholds, {"pairs": len(pairs), "unsupported_f1": round(f1, 4)}


# ---------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class CalibrationSettings:
    k: int = 32
    seed: int = 0
    max_new_tokens: int = 48
    heldout: float = 0.2
    choose_defaults: bool = True


def _part_settings(s: CalibrationSettings) -> dict[str, int]:
    return {"k": s.k, "seed": s.seed, "max_new_tokens": s.max_new_tokens}


def part_matches(part: Mapping[str, Any], settings: CalibrationSettings) -> bool:
    """True if a saved part was collected under ``settings`` (else the prompt is redone).

    Parts written before the settings were stored carry only their masks: their count must be
    ``k`` (a run with another ``--k`` once left 16-mask parts next to 32-mask ones, which cannot
    be fitted together)."""
    if part.get("skipped"):
        return True
    stored = part.get("settings")
    if stored is not None:
        return bool(stored == _part_settings(settings))
    return int(part["masks"].shape[0]) == settings.k


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_path(parts: Path, row_id: str) -> Path:
    digest = hashlib.sha256(row_id.encode()).hexdigest()[:12]
    return parts / f"{digest}.pt"


@dataclass(frozen=True)
class CollectWorkerFactory:
    """Builds the per-row collector in the worker's process (picklable: settings only).

    Attributes:
        model: Packaged model name or local folder, loaded by the worker.
        settings: Masks, seed and decoding budget.
        threads: torch threads per worker.
        tracer: An already loaded tracer (local engine only: it is not shipped).
    """

    model: str
    settings: CalibrationSettings
    threads: int | None = None
    tracer: Any = field(default=None, compare=False, repr=False)

    def __call__(self) -> Callable[[Row], dict[str, Any]]:
        from omnitrace_core.evaluation.methods import load_tracer

        tracer = self.tracer if self.tracer is not None else load_tracer(self.model, self.threads)
        s = self.settings

        def work(row: Row) -> dict[str, Any]:
            ex = collect_example(tracer, row, k=s.k, seed=s.seed, max_new_tokens=s.max_new_tokens)
            return ex.to_part(s) if ex is not None else {"skipped": True, "id": row["id"]}

        return work

    def __reduce__(self) -> Any:
        if self.tracer is not None:
            raise TypeError(
                "a CollectWorkerFactory holding a loaded tracer cannot be shipped to another process"
            )
        return (CollectWorkerFactory, (self.model, self.settings, self.threads))


def collect_all(
    rows: Sequence[Row],
    parts: Path,
    make_worker: Callable[[], Callable[[Row], dict[str, Any]]],
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: Callable[[], None] = lambda: None,
    accept: Callable[[Mapping[str, Any]], bool] = lambda part: True,
) -> tuple[list[Example], list[str]]:
    """Every prompt's example, reusing ``parts`` (resumable); rows run on ``engine``.

    A saved part that ``accept`` refuses (collected under other settings) is redone.
    Returns the examples (in row order) and one named problem per failed prompt.
    """
    from omnitrace_core.evaluation.engines import map_rows

    parts.mkdir(parents=True, exist_ok=True)
    saved: dict[str, dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    for row in rows:
        path = _part_path(parts, str(row["id"]))
        if path.is_file():
            try:
                part = torch.load(path, weights_only=False)
            except Exception:  # a part cut short by an interrupted run: redo that prompt
                part = None
            if part is not None and accept(part):
                saved[str(row["id"])] = part
                progress()
                continue
            path.unlink(missing_ok=True)
        todo.append(dict(row))
    problems: list[str] = []
    for outcome in map_rows(todo, make_worker, engine=engine, workers=workers, address=address):
        progress()
        if outcome.error is not None:
            problems.append(f"prompt {outcome.row_id!r}: {outcome.error}")
            continue
        torch.save(outcome.result, _part_path(parts, outcome.row_id))
        saved[outcome.row_id] = outcome.result
    examples = [
        Example.from_dict(saved[str(r["id"])])
        for r in rows
        if str(r["id"]) in saved and not saved[str(r["id"])].get("skipped")
    ]
    return examples, problems


def calibrate(
    tracer: Tracer,
    rows: Sequence[Row],
    out: str | Path,
    settings: CalibrationSettings | None = None,
    *,
    data_note: str = "",
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    threads: int | None = None,
    progress: Callable[[], None] = lambda: None,
) -> tuple[Calibration, list[str]]:
    """Collect (resumably, on ``engine``), fit, choose defaults and write the calibration to ``out``.

    With ``engine="ray"`` each worker loads the model by the tracer's name (a packaged name or
    folder); fitting and the choice of defaults run here, on ``tracer``.
    """
    s = settings or CalibrationSettings()
    out = Path(out)
    t0 = time.perf_counter()
    factory = CollectWorkerFactory(
        tracer.loaded.name, s, threads, tracer=tracer if engine == "local" else None
    )
    examples, problems = collect_all(
        rows,
        parts_dir(out),
        factory,
        engine=engine,
        workers=workers,
        address=address,
        progress=progress,
        accept=lambda part: part_matches(part, s),
    )
    if len(examples) < 2:
        raise InvalidInputError(
            f"only {len(examples)} usable calibration prompt(s) (need >= 2 with 2+ sources and a response)"
            + (f"; problems: {problems[:3]}" if problems else "")
        )
    weights, report = fit_head_weights(examples, seed=s.seed, heldout=s.heldout)
    layers, heads = head_shape(tracer.model)
    calibration = Calibration(
        model=tracer.loaded.name,
        config_hash=config_hash(tracer.model),
        num_layers=layers,
        num_heads=heads,
        head_weights=[[round(float(w), 8) for w in row] for row in weights.tolist()],
    )
    by_id = {str(r["id"]): r for r in rows}
    fit: dict[str, Any] = {
        "prompts": len(examples),
        "masks_per_prompt": s.k,
        "seed": s.seed,
        "forward_passes": sum(e.passes for e in examples),
        "collect_seconds": round(sum(e.seconds for e in examples), 1),
        "data": data_note,
        **report.as_dict(),
    }
    defaults: dict[str, Any] = {}
    if s.choose_defaults:
        learned = _with_calibration(tracer, calibration)
        mapping, curation, chosen = choose_defaults(tracer, by_id, examples, learned.signal_for("learned"))
        cfg = TracerConfig(signal="learned", mapping=mapping, curation=curation)
        grounding, ground_report = choose_grounding(learned, by_id, examples, cfg)
        defaults = {"mapping": mapping, "curation": curation, "grounding": grounding}
        fit.update(defaults=chosen, grounding=ground_report)
    fit["total_seconds"] = round(time.perf_counter() - t0, 1)
    calibration = calibration.model_copy(update={**defaults, "fit": fit})
    calibration.save(out)
    return calibration, problems


def _with_calibration(tracer: Tracer, calibration: Calibration) -> Tracer:
    """The same model and tokenizer with ``calibration`` (no reload)."""
    return Tracer(
        tracer.model,
        tracer.tokenizer,
        config=tracer.config,
        model_name=tracer.loaded.name,
        prompt_builder=tracer.prompt_builder,
        calibration=calibration,
    )
