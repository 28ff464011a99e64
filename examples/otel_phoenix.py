"""Cited generation traced into a local Arize Phoenix, offline, then read back from Phoenix's API.

    python examples/otel_phoenix.py                       # start Phoenix, trace, verify, stop
    python examples/otel_phoenix.py --keep-running        # ... and leave the UI open on :6006
    python examples/otel_phoenix.py --screenshot docs/images/phoenix_trace.png

Steps: start ``phoenix serve`` on 127.0.0.1:6006 (telemetry off, temporary database), instrument
OmniTrace with ``OmniTraceInstrumentor`` exporting over OTLP/HTTP, answer a question on the
packaged SmolLM2 model inside an application span, then fetch the project's spans from
Phoenix's REST API and check that the generation span, one sentence span per sentence and the
cited documents arrived with their attributes. Exit code 0 only if they did.

Needs ``pip install "omnitrace-integrations[otel,phoenix]"``; the screenshot also needs
``pip install playwright`` and a Chromium (Debian: ``apt-get install chromium``; no browser
download).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

SOURCES = [
    {
        "id": "harbor",
        "title": "Port Veltra harbor",
        "text": "Port Veltra's harbor was dredged in 1911 so that steamships could dock. "
        "Today it handles mostly ferries to the Osk islands.",
    },
    {
        "id": "lighthouse",
        "title": "Veltra lighthouse",
        "text": "The Veltra lighthouse stands 42 metres tall on Gannet Point. "
        "Its keeper, Ilse Marrow, lit the lamp every night for thirty years.",
    },
    {
        "id": "market",
        "title": "Fish market",
        "text": "The fish market of Port Veltra opens at five in the morning. "
        "Herring and cod are sold there by auction.",
    },
]
QUESTION = "How tall is the Veltra lighthouse and who was its keeper?"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_traced_generation(url: str, project: str, max_new_tokens: int) -> Any:
    """Instrument, answer the question inside an app span, flush; return the answer."""
    import torch

    from omnitrace_core import TextSource, Tracer
    from omnitrace_integrations.otel import OmniTraceInstrumentor
    from omnitrace_integrations.otel.phoenix import otlp_tracer_provider

    torch.set_num_threads(1)
    provider = otlp_tracer_provider(url, project, service_name="omnitrace-example")
    instrumentor = OmniTraceInstrumentor()
    # Content capture is on here so the UI shows the text; it is off by default.
    instrumentor.instrument(tracer_provider=provider, capture_content=True)
    try:
        tracer = Tracer.from_default()
        app = provider.get_tracer("example-app")
        with app.start_as_current_span("answer question", attributes={"openinference.span.kind": "CHAIN"}):
            answer = tracer.generate(
                [TextSource(**s) for s in SOURCES], QUESTION, max_new_tokens=max_new_tokens
            )
        tracer.flush_observers(10.0)
    finally:
        instrumentor.uninstrument()
        provider.force_flush()
        provider.shutdown()
    return answer


def check_spans(spans: list[dict[str, Any]], answer: Any) -> list[str]:
    """What is wrong with the spans Phoenix returned (empty list: all good)."""
    problems: list[str] = []
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    chats = by_name.get(f"chat {answer.model}", [])
    sentences = by_name.get("cite sentence", [])
    apps = by_name.get("answer question", [])
    if len(chats) != 1 or len(apps) != 1:
        return [f"expected one app span and one chat span, got names {sorted(by_name)}"]
    chat, app = chats[0], apps[0]
    attrs = chat["attributes"]
    if chat.get("parent_id") != app["context"]["span_id"]:
        problems.append("the chat span is not a child of the application span")
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": answer.prompt_tokens,
        "gen_ai.usage.output_tokens": answer.generated_tokens,
        "omnitrace.sentence_count": len(answer.sentences),
    }
    problems += [
        f"chat span {k} = {attrs.get(k)!r}, expected {v!r}" for k, v in expected.items() if attrs.get(k) != v
    ]
    if chat.get("span_kind") != "LLM":  # Phoenix lifts openinference.span.kind out of the attributes
        problems.append(f"chat span kind {chat.get('span_kind')!r}, expected LLM")
    if len(sentences) != len(answer.sentences):
        problems.append(f"{len(sentences)} sentence spans for {len(answer.sentences)} sentences")
    for span in sentences:
        a = span["attributes"]
        if span.get("span_kind") != "RETRIEVER":
            problems.append(f"sentence span kind {span.get('span_kind')!r}, expected RETRIEVER")
        if span.get("parent_id") != chat["context"]["span_id"]:
            problems.append(f"sentence span {span['context']['span_id']} is not under the chat span")
        sentence = answer.sentences[int(a["omnitrace.sentence.index"])]
        ids = [a.get(f"retrieval.documents.{k}.document.id") for k in range(len(sentence.citations))]
        if ids != [c.unit_id for c in sentence.citations]:
            problems.append(f"sentence {sentence.index}: documents {ids} != citations")
    return problems


def print_spans(spans: list[dict[str, Any]]) -> None:
    order = {"answer question": 0, "cite sentence": 2}
    for s in sorted(
        spans, key=lambda s: (order.get(s["name"], 1), s["attributes"].get("omnitrace.sentence.index", 0))
    ):
        a = s["attributes"]
        line = f"  {s['name']:<28} kind={s.get('span_kind', '-'):<10}"
        if s["name"] == "cite sentence":
            docs = [
                (
                    a[f"retrieval.documents.{k}.document.id"],
                    round(a[f"retrieval.documents.{k}.document.score"], 2),
                )
                for k in range(int(a["omnitrace.sentence.citation_count"]))
            ]
            line += (
                f" #{a['omnitrace.sentence.index']} grounded={a['omnitrace.sentence.grounded']} docs={docs}"
            )
        elif s["name"].startswith("chat"):
            line += (
                f" tokens in/out={a.get('gen_ai.usage.input_tokens')}/{a.get('gen_ai.usage.output_tokens')}"
                f" finish={a.get('gen_ai.response.finish_reasons')}"
            )
        print(line)


def screenshot(url: str, project: str, trace_id: str, path: Path, chromium: str) -> None:
    """Open the trace in Phoenix's UI with headless Chromium and save a PNG."""
    from playwright.sync_api import sync_playwright

    project_id = _get_json(f"{url}/v1/projects/{project}")["data"]["id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/projects/{project_id}/traces/{trace_id}", wait_until="networkidle")
        sentence_nodes = page.get_by_text("cite sentence")
        sentence_nodes.first.wait_for(timeout=30000)
        sentence_nodes.last.click()  # show a sentence's cited documents in the detail pane
        page.wait_for_timeout(2000)
        page.screenshot(path=str(path))
        browser.close()


def _get_json(address: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(address, timeout=10) as resp:
        return json.load(resp)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--project", default="omnitrace")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--keep-running", action="store_true", help="leave Phoenix up until Ctrl-C")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the trace in Phoenix's UI")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from omnitrace_integrations.otel.phoenix import local_phoenix, wait_for_spans

    t0 = time.perf_counter()
    with local_phoenix(port=args.port) as url:
        print(f"Phoenix up at {url} after {time.perf_counter() - t0:.1f} s")
        answer = run_traced_generation(url, args.project, args.max_new_tokens)
        print(f"\nanswer: {answer.text!r}")
        for s in answer.sentences:
            cites = [(c.source_id, round(c.score, 2)) for c in s.citations]
            print(f"  [{s.index}] {s.text.strip()!r} -> {cites}")
        spans = wait_for_spans(url, args.project, count=2 + len(answer.sentences))
        print(f"\n{len(spans)} spans read back from {url}/v1/projects/{args.project}/spans:")
        print_spans(spans)
        problems = check_spans(spans, answer)
        for p in problems:
            print(f"PROBLEM: {p}")
        if not problems:
            print("OK: generation span, one span per sentence and the cited documents arrived in Phoenix")
        if args.screenshot and not problems:
            trace_id = spans[0]["context"]["trace_id"]
            screenshot(url, args.project, trace_id, args.screenshot, args.chromium)
            print(f"screenshot: {args.screenshot}")
        if args.keep_running:
            print(f"\nPhoenix UI: {url} (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
