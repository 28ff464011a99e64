"""A self-contained HTML gallery of attributed answers, and a headless-Chromium screenshot of it.

Each example row shows its sources and the method's answer, one table line per sentence.
A sentence is tinted with the colour of its first cited source; hovering it (or focusing it
with Tab) outlines the sources it cites, dashes those a second method cites, stars the gold
sources of that sentence and, when citations carry character offsets or the cited text,
highlights the cited spans. ``gallery.html#hover=row3-s1`` opens with that sentence hovered,
which is how the screenshot shows the interaction without a mouse.

The page has no external resource (inline CSS and JS, no fonts, no CDN) so it works offline
and from a ``file://`` URL. Every dataset or prediction string is HTML-escaped; ids in the
page are generated here (``row<i>``, ``row<i>-s<j>``, ``row<i>-src<k>``), never taken from
the data, so odd source ids cannot break the markup or the script.
"""

from __future__ import annotations

import html
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitrace_core.errors import OmniTraceError
from omnitrace_core.evaluation.metrics import mentions
from omnitrace_core.evaluation.report.tables import ReportInputError

Row = dict[str, Any]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(OmniTraceError, RuntimeError):
    """Headless Chromium is missing or failed (the message says which and how)."""


def read_jsonl(path: Path) -> list[Row]:
    """The JSON object lines of a file; malformed lines are skipped (the scorer reports them).

    Raises:
        ReportInputError: the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"cannot read {path}: {exc}") from exc
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows.append(row)
    return rows


@dataclass
class GallerySection:
    """Examples from one dataset: its rows and one or two methods' predictions (by row id)."""

    label: str
    rows: list[Row]
    predictions: dict[str, Row]
    method: str
    compare: dict[str, Row] | None = None
    compare_method: str | None = None
    dataset: str = ""


@dataclass
class Gallery:
    """The rendered page, how many rows it shows, and a good sentence to show hovered."""

    html: str
    rows: int
    hover: str | None


# ---------------------------------------------------------------- choosing rows


def _sentences(prediction: Row | None) -> list[Row]:
    sents = (prediction or {}).get("sentences")
    return [s for s in sents if isinstance(s, dict)] if isinstance(sents, list) else []


def _cited(sentence: Row) -> list[str]:
    """Cited source ids in citation order, once each."""
    out: list[str] = []
    for c in sentence.get("citations") or []:
        sid = c.get("source_id") if isinstance(c, dict) else None
        if isinstance(sid, str) and sid not in out:
            out.append(sid)
    return out


def _evenly(pool: Sequence[Row], k: int) -> list[Row]:
    if k <= 0 or not pool:
        return []
    if k == 1:
        return [pool[len(pool) // 2]]
    picks = [pool[round(i * (len(pool) - 1) / (k - 1))] for i in range(min(k, len(pool)))]
    return list({r["id"]: r for r in picks}.values())


def pick_rows(
    rows: Sequence[Row], predictions: Mapping[str, Row], examples: int = 10, ids: Sequence[str] | None = None
) -> list[Row]:
    """A varied set of about ``examples`` rows: an even share per task, spread over each task's rows.

    Rows with at least two sentences and a citation are preferred (they show the most); within
    a task the picks are evenly spaced over the dataset order rather than the best-looking
    ones, so the gallery is not cherry-picked. ``ids`` picks exact rows instead.

    Raises:
        ReportInputError: an id in ``ids`` is not a dataset row with a prediction.
    """
    by_id = {r["id"]: r for r in rows}
    if ids:
        unknown = [i for i in ids if i not in by_id or i not in predictions]
        if unknown:
            raise ReportInputError(f"gallery rows not in the dataset or without a prediction: {unknown}")
        return [by_id[i] for i in ids]
    tasks: dict[str, list[Row]] = {}
    for r in rows:
        if _sentences(predictions.get(r["id"])):
            tasks.setdefault(str(r.get("task", "?")), []).append(r)
    if not tasks:
        return []
    share = dict.fromkeys(tasks, 0)
    for i in range(min(examples, sum(len(v) for v in tasks.values()))):
        # round robin, skipping tasks that have run out of rows
        order = list(tasks)
        for j in range(len(order)):
            t = order[(i + j) % len(order)]
            if share[t] < len(tasks[t]):
                share[t] += 1
                break
    out: list[Row] = []
    for task, pool in tasks.items():
        rich = [r for r in pool if len(_sentences(predictions[r["id"]])) >= 2
                and any(_cited(s) for s in _sentences(predictions[r["id"]]))]
        chosen = _evenly(rich if len(rich) >= share[task] else pool, share[task])
        out += sorted(chosen, key=lambda r: pool.index(r))
    return out


# ---------------------------------------------------------------- gold per sentence


def _span(item: Row, limit: int) -> tuple[int, int] | None:
    a, b = item.get("start"), item.get("end")
    if isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= limit:
        return a, b
    return None


def _overlap(x: tuple[int, int], y: tuple[int, int]) -> int:
    return max(0, min(x[1], y[1]) - max(x[0], y[0]))


def _is_option(row: Row, source_id: str) -> bool:
    return source_id in (row.get("options") or []) or source_id.startswith("option")


def sentence_gold(row: Row, sentence: Row, text: str) -> tuple[list[str] | None, bool]:
    """The gold sources of a predicted sentence (None: unlabelled) and whether gold marks it unsupported.

    Forced rows: the ``response_sentences`` entry the sentence overlaps most. Generated rows:
    the non-option sources whose keys the sentence mentions, as the scorer labels them.
    """
    golds = row.get("response_sentences")
    if isinstance(golds, list) and golds:
        mine = _span(sentence, len(text))
        best, best_overlap = None, 0
        for g in golds:
            if not isinstance(g, dict):
                continue
            theirs = _span(g, len(text) if text else 10**9)
            if mine and theirs:
                o = _overlap(mine, theirs)
            else:
                o = len(g.get("text", "")) if str(g.get("text", "")).strip() and (
                    str(g.get("text")) in str(sentence.get("text", ""))
                    or str(sentence.get("text", "")) in str(g.get("text"))) else 0
            if o > best_overlap:
                best, best_overlap = g, o
        if best is None:
            return None, False
        return [str(s) for s in best.get("gold_sources") or []], bool(best.get("unsupported"))
    said = str(sentence.get("text", ""))
    gold = [
        s["id"] for s in row.get("sources") or []
        if isinstance(s, dict) and not _is_option(row, str(s.get("id")))
        and any(isinstance(k, str) and k and mentions(said, k) for k in s.get("keys") or [])
    ]
    return (gold or None), False


def _row_gold(row: Row) -> set[str]:
    gold = {str(s) for s in row.get("gold_sources") or []}
    for g in row.get("response_sentences") or []:
        if isinstance(g, dict):
            gold |= {str(s) for s in g.get("gold_sources") or []}
    return gold


def _aligned_citations(sentence: Row, text: str, other: Row | None) -> list[str] | None:
    """Sources the other method cites for (the sentences mostly inside) this sentence."""
    if other is None:
        return None
    mine = _span(sentence, len(text))
    out: list[str] = []
    for s in _sentences(other):
        theirs = _span(s, len(str(other.get("text", ""))))
        inside = (mine and theirs and 2 * _overlap(mine, theirs) > theirs[1] - theirs[0]) or (
            not (mine and theirs) and str(s.get("text", "")).strip() == str(sentence.get("text", "")).strip())
        if inside:
            out += [c for c in _cited(s) if c not in out]
    return out


def _cited_spans(citation: Row, source_text: str) -> tuple[int, int] | None:
    """Where a citation points inside its source: char offsets, else the cited text found in it."""
    a, b = citation.get("char_start"), citation.get("char_end")
    if isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(source_text):
        if not (a == 0 and b == len(source_text)):  # a whole-source citation is no span
            return a, b
        return None
    cited = citation.get("cited_text")
    if isinstance(cited, str) and cited.strip() and cited != source_text:
        at = source_text.find(cited)
        if at >= 0:
            return at, at + len(cited)
    return None


# ---------------------------------------------------------------- rendering

_e = html.escape

CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d232a;
 background:#f3f4f6}
body{margin:0 auto;max-width:1260px;padding:14px 18px}
h1{font-size:21px;margin:4px 0 6px}
h2{font-size:17px;margin:22px 0 4px}
.lede,.legend{color:#4a5560;font-size:13px;max-width:80em;line-height:1.45;margin:4px 0}
.legend span{white-space:nowrap}
.row{background:#fff;border:1px solid #d9dde3;border-radius:8px;margin:12px 0;padding:10px 14px 12px}
.row>header{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.task{background:#263238;color:#fff;border-radius:4px;padding:1px 7px;font-size:12px}
.rid{font-family:ui-monospace,Menlo,Consolas,monospace;color:#67717b;font-size:12px}
.meta{font-size:12px;color:#67717b}
.q{margin:6px 0 10px;font-weight:600;font-size:14px}
.cols{display:grid;grid-template-columns:minmax(0,5fr) minmax(0,7fr);gap:16px}
.src{border:1px solid #e1e4e8;border-left:5px solid var(--c);border-radius:6px;padding:5px 9px;
 margin-bottom:6px;font-size:12.5px;line-height:1.45;transition:opacity .12s,background .12s}
.src-head{display:flex;gap:6px;align-items:center;font-size:12px;margin-bottom:1px}
.sid{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:700;color:var(--c)}
.stitle{color:#333;font-weight:600}
.badge{font-size:10.5px;border-radius:3px;padding:0 5px;border:1px solid #b8860b;color:#7a5600;
 background:#fff6d6}
.hovering .src{opacity:.42}
.hovering .src.cited,.hovering .src.cited-alt,.hovering .src.gold-now{opacity:1}
.src.cited{background:color-mix(in srgb,var(--c) 14%,white);box-shadow:0 0 0 2px var(--c)}
.src.cited-alt{outline:2px dashed #37474f;outline-offset:2px}
.src.gold-now .src-head::after{content:"\\2605 gold for this sentence";color:#7a5600;font-size:11px;
 margin-left:auto}
.seg.span-hl{background:color-mix(in srgb,var(--c) 40%,white);border-bottom:2px solid var(--c)}
table.ans{width:100%;border-collapse:collapse;font-size:13.5px}
.ans th{font-size:10.5px;text-transform:uppercase;letter-spacing:.03em;color:#67717b;text-align:left;
 font-weight:600;border-bottom:1px solid #dde1e6;padding:2px 6px}
.ans td{padding:5px 6px;vertical-align:top;border-bottom:1px solid #eef0f2}
.ans td.n{color:#9aa3ab;font-size:11px;width:1.5em}
.ans td.c{width:8.5em}
tr.sent{cursor:default}
tr.sent .t{background:color-mix(in srgb,var(--c) 20%,white);border-bottom:2px solid var(--c);
 padding:1px 2px;border-radius:2px;line-height:1.6;-webkit-box-decoration-break:clone;
 box-decoration-break:clone}
tr.sent.unsup .t{background:#eceff1;border-bottom:2px dashed #90a4ae;font-style:italic}
tr.sent.hl td{background:#f6f8fa}
tr.sent.hl td:first-child{box-shadow:inset 3px 0 0 #263238}
tr.sent.hl .t{background:color-mix(in srgb,var(--c) 38%,white)}
.chip{display:inline-block;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;border-radius:3px;
 padding:0 4px;margin:1px 2px 1px 0;background:var(--c);color:#fff;white-space:nowrap}
.chip.alt{background:#fff;color:var(--c);border:1px solid var(--c);padding:0 3px}
.chip.gold{background:#fff6d6;color:#7a5600;border:1px solid #b8860b;padding:0 3px}
.chip.none{background:#eceff1;color:#546e7a}
.chip .ok{font-weight:700}
.chip .no{font-weight:700;opacity:.9}
footer{color:#67717b;font-size:12px;margin:18px 0}
.solo .row:not(.focus),.solo .section:not(:has(.focus)),.solo footer{display:none}
"""

JS = r"""
(function () {
  function ids(el, key) { return (el.dataset[key] || "").split(" ").filter(Boolean); }
  function mark(list, cls) {
    list.forEach(function (id) { var el = document.getElementById(id); if (el) { el.classList.add(cls); } });
  }
  function clear() {
    document.querySelectorAll(".hl,.cited,.cited-alt,.gold-now,.span-hl,.hovering").forEach(function (el) {
      el.classList.remove("hl", "cited", "cited-alt", "gold-now", "span-hl", "hovering");
    });
    document.body.removeAttribute("data-hover");
  }
  function apply(s) {
    clear();
    s.classList.add("hl");
    var row = s.closest(".row");
    if (row) { row.classList.add("hovering"); }
    mark(ids(s, "cites"), "cited");
    mark(ids(s, "alt"), "cited-alt");
    mark(ids(s, "gold"), "gold-now");
    (row || document).querySelectorAll(".seg").forEach(function (seg) {
      if (ids(seg, "by").indexOf(s.id) >= 0) { seg.classList.add("span-hl"); }
    });
    document.body.setAttribute("data-hover", s.id);
  }
  document.querySelectorAll("tr.sent").forEach(function (s) {
    s.addEventListener("mouseenter", function () { apply(s); });
    s.addEventListener("focus", function () { apply(s); });
    s.addEventListener("mouseleave", clear);
    s.addEventListener("blur", clear);
  });
  function fromUrl() {
    var query = location.hash + "&" + location.search;
    var m = /(?:^|[#?&])hover=([A-Za-z0-9_-]+)/.exec(query);
    var s = m && document.getElementById(m[1]);
    if (!s || !s.classList.contains("sent")) { return; }
    apply(s);
    var row = s.closest(".row");
    if (/(?:^|[#?&])solo(?:=1)?(?:&|$)/.test(query) && row) {
      // Only this row (for screenshots: headless Chromium paints a scrolled page unreliably).
      document.querySelectorAll(".row.focus").forEach(function (r) { r.classList.remove("focus"); });
      row.classList.add("focus");
      document.body.classList.add("solo");
    } else {
      (row || s).scrollIntoView({block: "start"});
    }
  }
  fromUrl();
  window.addEventListener("hashchange", fromUrl);
})();
"""


def _seconds(spans: Any) -> str:
    """``[[0.5, 3.98], ...]`` as ``0.5–4.0 s, ...`` ('' when not a list of pairs)."""
    if not isinstance(spans, list):
        return ""
    pairs = [x for x in spans if isinstance(x, list | tuple) and len(x) == 2]
    parts = [f"{a:.1f}\u2013{b:.1f} s" for a, b in pairs
             if isinstance(a, int | float) and isinstance(b, int | float)]
    return ", ".join(parts)


def _citation_note(citation: Row) -> tuple[str, str]:
    """(visible suffix, tooltip) of a citation chip: its seconds / boxes, and its score."""
    seconds = _seconds(citation.get("seconds"))
    boxes = citation.get("boxes")
    tip = [f"score {citation['score']:.2f}"] if isinstance(citation.get("score"), int | float) else []
    if seconds:
        tip.append(f"seconds {seconds}")
    if isinstance(boxes, list) and boxes:
        tip.append(f"{len(boxes)} box(es) {boxes}")
    return (f" @{seconds}" if seconds else ""), "; ".join(tip)


def _chip(source_id: str, colour: str, cls: str, gold: list[str] | None, title: str = "",
          option: bool = False, suffix: str = "") -> str:
    mark = ""
    if gold is not None and not option:
        ok = source_id in gold
        mark = ' <span class="ok">&#10003;</span>' if ok else ' <span class="no">&#10007;</span>'
        title = (title + "; " if title else "") + ("in gold" if source_id in gold else "not in gold")
    return (f'<span class="chip {cls}" style="--c:{colour}" title="{_e(title)}">'
            f"{_e(source_id)}{_e(suffix)}{mark}</span>")


@dataclass
class _Hoverable:
    id: str
    score: float


def _render_row(
    index: int, row: Row, prediction: Row, section: GallerySection, hoverables: list[_Hoverable]
) -> str:
    rid = f"row{index}"
    sources = [s for s in row.get("sources") or [] if isinstance(s, dict)]
    colour = {str(s.get("id")): PALETTE[k % len(PALETTE)] for k, s in enumerate(sources)}
    dom_id = {str(s.get("id")): f"{rid}-src{k}" for k, s in enumerate(sources)}
    text = str(prediction.get("text", ""))
    other = (section.compare or {}).get(row["id"]) if section.compare is not None else None
    row_gold = _row_gold(row)

    # Cited spans per source: (start, end, sentence dom id).
    spans: dict[str, list[tuple[int, int, str]]] = {}
    source_text = {str(s.get("id")): str(s.get("text", "")) for s in sources}
    lines = []
    sentences = _sentences(prediction)
    for j, sent in enumerate(sentences):
        sid = f"{rid}-s{j}"
        cited = _cited(sent)
        for c in sent.get("citations") or []:
            if isinstance(c, dict) and str(c.get("source_id")) in source_text:
                span = _cited_spans(c, source_text[str(c.get("source_id"))])
                if span:
                    spans.setdefault(str(c.get("source_id")), []).append((*span, sid))
        gold, unsupported = sentence_gold(row, sent, text)
        alt = _aligned_citations(sent, text, other)
        ungrounded = not cited or sent.get("grounded") is False
        first = colour.get(cited[0], "#90a4ae") if cited else "#90a4ae"
        notes = {str(c.get("source_id")): _citation_note(c)
                 for c in reversed(sent.get("citations") or []) if isinstance(c, dict)}
        chips = "".join(
            _chip(c, colour.get(c, "#546e7a"), "", gold, notes.get(c, ("", ""))[1], _is_option(row, c),
                  notes.get(c, ("", ""))[0])
            for c in cited
        ) or '<span class="chip none">none</span>'
        cells = [
            f'<td class="n">{j + 1}</td>',
            f'<td class="text"><span class="t">{_e(str(sent.get("text", "")))}</span></td>',
            f'<td class="c">{chips}</td>',
        ]
        if section.compare_method is not None:
            alt_chips = "".join(_chip(c, colour.get(c, "#546e7a"), "alt", gold, option=_is_option(row, c))
                                for c in alt or []) or '<span class="chip none">none</span>'
            cells.append(f'<td class="c">{alt_chips if other is not None else "-"}</td>')
        if unsupported:
            gold_cell = '<span class="chip gold">unsupported</span>'
        elif gold:
            gold_cell = "".join(f'<span class="chip gold">{_e(g)}</span>' for g in gold)
        else:
            gold_cell = '<span class="meta" title="the scorer does not label this sentence">-</span>'
        cells.append(f'<td class="c">{gold_cell}</td>')
        attrs = {
            "data-cites": " ".join(dom_id[c] for c in cited if c in dom_id),
            "data-alt": " ".join(dom_id[c] for c in alt or [] if c in dom_id),
            "data-gold": " ".join(dom_id[g] for g in gold or [] if g in dom_id),
        }
        attr_text = "".join(f' {k}="{v}"' for k, v in attrs.items() if v)
        cls = "sent unsup" if ungrounded else "sent"
        lines.append(f'<tr class="{cls}" id="{sid}" tabindex="0" style="--c:{first}"{attr_text}>'
                     + "".join(cells) + "</tr>")
        hoverables.append(_Hoverable(sid, (2.0 if cited else 0) + (1.0 if gold else 0)
                                     + (1.0 if alt is not None and set(alt) != set(cited) else 0)
                                     + (0.5 if j > 0 else 0) + (0.5 if len(sentences) >= 3 else 0)
                                     + (0.5 if len(cited) >= 2 else 0)
                                     + (1.0 if any(sp[2] == sid for v in spans.values() for sp in v) else 0)))

    src_html = []
    for s in sources:
        s_id = str(s.get("id"))
        body = source_text[s_id]
        segs = _segments(body, spans.get(s_id, []))
        badges = ""
        if s_id in row_gold:
            badges += '<span class="badge">gold</span>'
        if row.get("gold_option") == s_id:
            badges += '<span class="badge">correct option</span>'
        if s.get("modality") not in (None, "text"):
            badges += f'<span class="badge">{_e(str(s.get("modality")))}</span>'
            media = f'<code>{_e(str(s.get("path", "")))}</code>'
            all_gold = row.get("gold_spans")
            gold_spans = all_gold.get(s_id) if isinstance(all_gold, dict) else None
            if _seconds(gold_spans):
                media += f' <span class="meta">gold {_e(_seconds(gold_spans))}</span>'
            segs = media + (f"<br>{segs}" if body else "")
        title = f'<span class="stitle">{_e(str(s["title"]))}</span>' if s.get("title") else ""
        src_html.append(
            f'<div class="src" id="{dom_id[s_id]}" data-source="{_e(s_id)}" style="--c:{colour[s_id]}">'
            f'<div class="src-head"><span class="sid">{_e(s_id)}</span>{title}{badges}</div>'
            f'<div class="src-text">{segs}</div></div>'
        )
    head_cells = ["<th></th>", "<th>sentence</th>", f"<th>{_e(section.method)}</th>"]
    if section.compare_method is not None:
        head_cells.append(f"<th>{_e(section.compare_method)}</th>")
    head_cells.append("<th>gold</th>")
    meta = []
    if row.get("gold_sources"):
        meta.append("gold sources: " + ", ".join(_e(str(g)) for g in row["gold_sources"]))
    if row.get("gold_option"):
        meta.append("gold option: " + _e(str(row["gold_option"])))
    if row.get("response"):
        meta.append("response forced (teacher_forced)")
    question = f'<p class="q">{_e(str(row.get("question", "")))}</p>' if row.get("question") else ""
    return (
        f'<section class="row" id="{rid}" data-row-id="{_e(row["id"])}">'
        f'<header><span class="task">{_e(str(row.get("task", "?")))}</span>'
        f'<span class="rid">{_e(row["id"])}</span><span class="meta">{" · ".join(meta)}</span></header>'
        f"{question}"
        f'<div class="cols"><div class="sources">{"".join(src_html)}</div>'
        f'<div class="answer"><table class="ans"><thead><tr>{"".join(head_cells)}</tr></thead>'
        f'<tbody>{"".join(lines)}</tbody></table></div></div></section>'
    )


def _segments(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """Source text split at every cited-span boundary; each piece lists the sentences citing it."""
    if not spans:
        return _e(text)
    cuts = sorted({0, len(text), *(a for a, _, _ in spans), *(b for _, b, _ in spans)})
    out = []
    for a, b in itertools.pairwise(cuts):
        by = sorted({sid for s, e, sid in spans if s <= a and b <= e})
        piece = _e(text[a:b])
        out.append(f'<span class="seg" data-by="{" ".join(by)}">{piece}</span>' if by else piece)
    return "".join(out)


def render_gallery(sections: Sequence[GallerySection], title: str = "OmniTrace: attributed examples",
                   intro: str = "") -> Gallery:
    """The whole page for these sections (each a dataset with its chosen rows)."""
    hoverables: list[_Hoverable] = []
    body: list[str] = []
    index = 0
    for section in sections:
        compare = f" beside {_e(section.compare_method)}'s citations" if section.compare_method else ""
        body.append(f'<div class="section"><h2>{_e(section.label)}</h2>')
        body.append(f'<p class="lede">{len(section.rows)} rows of <code>{_e(section.dataset)}</code>: '
                    f"{_e(section.method)}'s answer sentences{compare}.</p>")
        for row in section.rows:
            prediction = section.predictions.get(row["id"])
            if prediction is None:
                continue
            body.append(_render_row(index, row, prediction, section, hoverables))
            index += 1
        body.append("</div>")
    best = max(hoverables, key=lambda h: h.score, default=None)
    legend = (
        '<p class="legend">Each answer sentence is tinted with the colour of its first cited source '
        "(grey, italic: nothing cited / marked ungrounded). Hover a sentence (or focus it with Tab): "
        "the sources it cites get a solid outline in their colour, sources the second method cites a "
        "dashed outline, the sentence's gold sources a &#9733;, and cited spans are highlighted when "
        "citations carry offsets. Chips: &#10003; in the sentence's gold, &#10007; not; a sentence the "
        "scorer does not label shows <q>-</q> as gold. <span><code>#hover=row3-s1</code> in the URL "
        "opens with that sentence hovered.</span></p>"
    )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<h1>{_e(title)}</h1>"
        + (f'<p class="lede">{_e(intro)}</p>' if intro else "")
        + legend
        + "\n".join(body)
        + "<footer>Generated by <code>omnitrace report</code>; self-contained (no external resources)."
        "</footer>"
        + f"<script>{JS}</script></body></html>\n"
    )
    return Gallery(page, index, best.id if best else None)


def write_gallery(
    sections: Sequence[GallerySection],
    path: Path,
    title: str = "OmniTrace: attributed examples",
    intro: str = "",
) -> Gallery:
    """Render and write the gallery page; returns it (with a suggested sentence to hover)."""
    gallery = render_gallery(sections, title, intro)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(gallery.html, encoding="utf-8")
    return gallery


# ---------------------------------------------------------------- headless Chromium


def find_chromium() -> str | None:
    """The first Chromium / Chrome on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(page: Path, extra: list[str], fragment: str | None, chromium: str | None,
                  timeout: float) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``page`` with networking, sync and updates off (nothing is fetched)."""
    exe = chromium or find_chromium()
    if exe is None:
        raise BrowserError(f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                           "install it (Debian: apt-get install chromium) or pass its path")
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory(prefix="omnitrace-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", *extra, url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"{exe} did not finish rendering {page} within {timeout:.0f} s") from exc
        except OSError as exc:
            raise BrowserError(f"cannot run {exe}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BrowserError(f"{exe} exited with {done.returncode} on {page}: {tail}")
    return done


def screenshot(page: Path, png: Path, hover: str | None = None, window: tuple[int, int] = (1280, 900),
               chromium: str | None = None, timeout: float = 120) -> Path:
    """A PNG of the page as headless Chromium renders it, with sentence ``hover`` hovered.

    With ``hover`` the page shows only that sentence's row (``#hover=<id>&solo``): headless
    Chromium's ``--screenshot`` does not reliably paint a page scrolled by its script.

    Raises:
        BrowserError: no Chromium, or it failed or wrote no image.
    """
    png.parent.mkdir(parents=True, exist_ok=True)
    target = png.resolve()
    if target.exists():
        target.unlink()
    _run_chromium(page, [f"--screenshot={target}", f"--window-size={window[0]},{window[1]}",
                         "--virtual-time-budget=3000"], f"hover={hover}&solo" if hover else None,
                  chromium, timeout)
    if not target.exists() or target.stat().st_size == 0:
        raise BrowserError(f"Chromium wrote no screenshot to {target}")
    return png


def dump_dom(page: Path, hover: str | None = None, chromium: str | None = None, timeout: float = 120) -> str:
    """The page's DOM after its script ran (``--dump-dom``), e.g. to check the hover classes.

    Raises:
        BrowserError: no Chromium, or it failed.
    """
    fragment = f"hover={hover}" if hover else None
    done = _run_chromium(page, ["--dump-dom", "--virtual-time-budget=3000"], fragment, chromium, timeout)
    return done.stdout
