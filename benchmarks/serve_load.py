"""Load test for ``omnitrace serve``: concurrent clients, throughput, latency, 429s, correctness.

Starts a server in this process (uvicorn in a thread, ``--model``), or deploys it on a local Ray
Serve instance (``--ray --replicas N``), or targets a running one (``--url``). Then:

1. **Serial references.** Each request variant (different questions and document sets) is sent
   once, alone; its answer text and citations are the reference.
2. **Load.** ``--clients`` concurrent clients loop for ``--seconds``, each sending a random
   variant (streaming with probability ``--stream-fraction``). A 429 is recorded and the client
   waits its ``Retry-After`` (``--no-backoff``: retries at once).
3. **Checks.** Every 200 answer is compared with its variant's reference: text and every citation
   (source id, span, score to 1e-6). A mismatch is a *mixed-up or lost* answer. Any status other
   than 200 / 429, or a broken stream, is an *error*.

Reports requests/s, p50 / p95 / max latency of successful requests (and time to first token
for streamed ones), completion tokens/s, the 429 rate, errors and mismatches; saves JSON.

usage: python benchmarks/serve_load.py [--model smollm2-135m] [--clients 8] [--seconds 30]
       [--max-tokens 24] [--queue-size 16] [--max-batch-size 8] [--stream-fraction 0.5] [--ray --replicas 2]
       [--url http://host:8000 --api-key KEY] [--out benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

DOCS = {
    "lighthouse": "The Veltra lighthouse stands 42 metres tall on Gannet Point. Its keeper was Ilse Marrow.",
    "harbor": "Port Veltra's harbor was dredged in 1911 so that steamships could dock.",
    "market": "The fish market of Port Veltra opens at five in the morning. Herring is sold by auction.",
    "valbrook": "Valbrook Works was founded in 1905 in Cedar Falls. The company makes water filters.",
    "mill": "The Ostrava paper mill employs 230 people and runs three machines day and night.",
}
VARIANTS = [
    ("How tall is the Veltra lighthouse?", ["harbor", "lighthouse", "market"]),
    ("When was the harbor dredged?", ["harbor", "market"]),
    ("When does the fish market open?", ["market", "lighthouse"]),
    ("When was Valbrook Works founded and what does it make?", ["valbrook", "mill"]),
    ("How many people work at the paper mill?", ["mill", "valbrook", "harbor"]),
    ("Who was the keeper of the lighthouse?", ["lighthouse", "market", "mill"]),
]


def _body(variant: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    question, ids = VARIANTS[variant]
    return {
        "messages": [{"role": "user", "content": question}],
        "documents": [{"id": i, "text": DOCS[i]} for i in ids],
        "max_tokens": max_tokens,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def _cites(annotations: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (b["source_id"], b["start_index"], b["end_index"], round(float(b["score"]), 6))
        for b in (a["source_citation"] for a in annotations)
    ]


async def _one(client: httpx.AsyncClient, variant: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    """Send one request; return status, latency, text, citations, tokens, first-token time."""
    t0 = time.perf_counter()
    body = _body(variant, max_tokens, stream)
    if not stream:
        r = await client.post("/v1/chat/completions", json=body)
        out: dict[str, Any] = {"status": r.status_code, "latency": time.perf_counter() - t0}
        if r.status_code == 200:
            data = r.json()
            msg = data["choices"][0]["message"]
            out.update(
                text=msg["content"],
                cites=_cites(msg["annotations"]),
                tokens=data["usage"]["completion_tokens"],
            )
        else:
            out["retry_after"] = float(r.headers.get("retry-after") or 0)
            out["error"] = r.text[:300]
        return out
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode("utf-8", "replace")
            return {
                "status": r.status_code,
                "latency": time.perf_counter() - t0,
                "retry_after": float(r.headers.get("retry-after") or 0),
                "error": text[:300],
            }
        text, anns, tokens, first, done = "", [], 0, None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 599, "latency": time.perf_counter() - t0, "error": json.dumps(chunk)[:300]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                delta = chunk["choices"][0]["delta"]
                if delta.get("content"):
                    first = first if first is not None else time.perf_counter() - t0
                    text += delta["content"]
                anns += delta.get("annotations", [])
        if not done:
            return {
                "status": 598,
                "latency": time.perf_counter() - t0,
                "error": "stream ended without [DONE]",
            }
        return {
            "status": 200,
            "latency": time.perf_counter() - t0,
            "text": text,
            "cites": _cites(anns),
            "tokens": tokens,
            "first_token": first,
        }


async def _load(url: str, headers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    timeout = httpx.Timeout(args.request_timeout)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as client:
        print(f"serial references for {len(VARIANTS)} variants ...", flush=True)
        refs = []
        for v in range(len(VARIANTS)):
            ref = await _one(client, v, args.max_tokens, stream=False)
            if ref["status"] != 200:
                raise SystemExit(f"reference request {v} failed: {ref['status']} {ref.get('error')}")
            refs.append(ref)
        serial_latency = statistics.median(r["latency"] for r in refs)
        print(
            f"serial median latency {serial_latency:.2f} s; load: {args.clients} clients x {args.seconds:g} s",
            flush=True,
        )
        rng = random.Random(args.seed)
        results: list[dict[str, Any]] = []
        end = time.perf_counter() + args.seconds

        async def worker(k: int) -> None:
            local = random.Random(rng.random() + k)
            while time.perf_counter() < end:
                v = local.randrange(len(VARIANTS))
                stream = local.random() < args.stream_fraction
                try:
                    res = await _one(client, v, args.max_tokens, stream)
                except httpx.HTTPError as exc:
                    res = {"status": 597, "latency": 0.0, "error": repr(exc)}
                res.update(variant=v, stream=stream, client=k, at=time.perf_counter())
                if res["status"] == 200:
                    ref = refs[v]
                    res["match"] = res["text"] == ref["text"] and res["cites"] == ref["cites"]
                results.append(res)
                if res["status"] == 429 and not args.no_backoff:
                    await asyncio.sleep(res.get("retry_after") or 1.0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(args.clients)))
        wall = time.perf_counter() - t0
        metrics_text = (await client.get("/metrics")).text
    return {
        "refs": refs,
        "results": results,
        "wall_s": wall,
        "serial_latency_s": serial_latency,
        "metrics_excerpt": [
            ln
            for ln in metrics_text.splitlines()
            if ln.startswith(
                (
                    "omnitrace_requests_total",
                    "omnitrace_rejected_total",
                    "omnitrace_cancelled_total",
                    "omnitrace_batch_size_count",
                    "omnitrace_batch_size_sum",
                )
            )
        ],
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    res = run["results"]
    ok = [r for r in res if r["status"] == 200]
    busy = [r for r in res if r["status"] == 429]
    errors = [r for r in res if r["status"] not in (200, 429)]
    lat = [r["latency"] for r in ok]
    ttft = [r["first_token"] for r in ok if r.get("first_token") is not None]
    return {
        "requests": len(res),
        "ok": len(ok),
        "rejected_429": len(busy),
        "rate_429": round(len(busy) / len(res), 4) if res else None,
        "errors": len(errors),
        "error_samples": [{"status": r["status"], "error": r.get("error")} for r in errors[:5]],
        "mismatched_answers": sum(1 for r in ok if not r["match"]),
        "requests_per_s": round(len(ok) / run["wall_s"], 3),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / run["wall_s"], 2),
        "latency_s": {"p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95), "max": max(lat) if lat else None},
        "time_to_first_token_s": {"p50": _pct(ttft, 0.5), "p95": _pct(ttft, 0.95)},
        "serial_latency_s": run["serial_latency_s"],
        "wall_s": round(run["wall_s"], 2),
        "streamed_ok": sum(1 for r in ok if r["stream"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="A running server (default: start one here)")
    p.add_argument("--api-key")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--queue-size", type=int, default=16, help="Server queue (when started here)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="Server: most queued requests decoded together (1: one at a time; when started here)",
    )
    p.add_argument("--stream-fraction", type=float, default=0.5)
    p.add_argument(
        "--no-backoff", action="store_true", help="Retry a 429 at once instead of after Retry-After"
    )
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the in-process server")
    p.add_argument("--ray", action="store_true", help="Deploy on a local Ray Serve instance")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = p.parse_args()

    from omnitrace_integrations.serving.settings import ServeSettings

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    settings = ServeSettings(
        model=args.model,
        queue_size=args.queue_size,
        max_batch_size=args.max_batch_size,
        max_tokens=max(args.max_tokens, 512),
        request_timeout_s=args.request_timeout,
    )
    stop = None
    if args.url:
        url, where = args.url, f"external server {args.url}"
    elif args.ray:
        import socket

        from omnitrace_integrations.serving.ray_app import deploy

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.perf_counter()
        url = deploy(
            settings.model_copy(update={"port": port}),
            replicas=args.replicas,
            num_cpus=args.replica_cpus,
            threads=args.threads or 1,
        )
        print(f"Ray Serve: {args.replicas} replicas up in {time.perf_counter() - t0:.1f} s", flush=True)
        where = f"Ray Serve, {args.replicas} replicas x {args.replica_cpus:g} CPU"

        def stop() -> None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    else:
        from omnitrace_integrations.serving.app import create_app
        from omnitrace_integrations.serving.runner import ServerThread, load_tracer

        server = ServerThread(create_app(load_tracer(args.model, args.threads), settings))
        url = server.start()
        where = "in-process uvicorn, 1 worker"
        stop = server.stop
    try:
        run = asyncio.run(_load(url, headers, args))
    finally:
        if stop is not None:
            stop()
    summary = summarize(run)
    report = {
        "benchmark": "serve_load",
        "server": where,
        "model": args.model,
        "clients": args.clients,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "queue_size": args.queue_size if not args.url else None,
        "max_batch_size": args.max_batch_size if not args.url else None,
        "stream_fraction": args.stream_fraction,
        "backoff": not args.no_backoff,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "summary": summary,
        "server_metrics": run["metrics_excerpt"],
        "references": [
            {"variant": i, "text": r["text"], "citations": r["cites"]} for i, r in enumerate(run["refs"])
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
