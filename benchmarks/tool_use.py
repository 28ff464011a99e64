"""Tool use on the packaged models: 50 generated requests, each needing exactly one tool call.

A seeded generator (not the dev set) writes 50 user requests over five tools (weather,
currency conversion, population lookup, addition, a timer), each with one right tool and
definite argument values. Every request is decoded twice through :meth:`Tracer.chat` with the
tools shown the model's way (Qwen2.5's chat template renders them; SmolLM2's drops them, so the
documented fallback system text lists them):

* ``grammar``: ``tool_choice="any"``: the call is decoded under the tool-call grammar
  (:func:`omnitrace_core.tools.tool_call_grammar`, one call);
* ``free``: the same prompt, unconstrained greedy decoding with the tracer's defaults (its
  ``no_repeat_ngram_size=3``, which transformers applies over the prompt too); whatever
  ``<tool_call>`` text comes out is parsed (:func:`omnitrace_core.tools.parse_tool_calls`);
* ``free_no_ngram``: as ``free`` with ``no_repeat_ngram_size=0``: the n-gram guard forbids
  copying any three tokens of the prompt, e.g. the tool listing's ``"name": "`` (so the
  fairest unconstrained baseline is without it).

Per mode it reports the share of requests whose reply parses into a valid call (a known tool
with arguments valid for its schema), with the right tool, with the right tool and the right
arguments (strings compared case-insensitively, numbers by value), and seconds per call.

    PYTHONPATH=core:. OMP_NUM_THREADS=1 python benchmarks/tool_use.py --model smollm2-135m
    PYTHONPATH=core:. OMP_NUM_THREADS=1 python benchmarks/tool_use.py --model qwen2.5-0.5b --limit 20

Writes ``benchmarks/results/tool_use-<model>.json`` (the summary and every reply);
``--rescore`` recomputes the scores from the saved replies (no model). ``--modes``
runs some modes only and keeps the other modes' results already in that file (same model, seed
and token limit; each mode records its own number of requests ``n``, so ``--limit`` may differ).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from omnitrace_core import FinalEvent, Tracer
from omnitrace_core.tools import ToolSpec, parse_tool_calls, tool_call_grammar

CITIES = ["Oslo", "Paris", "Tokyo", "Cairo", "Lima", "Berlin", "Madrid", "Toronto", "Nairobi", "Sydney"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "NOK"]
UNITS = ["celsius", "fahrenheit"]

TOOLS = [
    ToolSpec(
        "get_weather",
        "Current weather in a city.",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": UNITS}},
            "required": ["city", "unit"],
        },
    ),
    ToolSpec(
        "convert_currency",
        "Convert an amount of money from one currency to another.",
        {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from_currency": {"type": "string", "enum": CURRENCIES},
                "to_currency": {"type": "string", "enum": CURRENCIES},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    ),
    ToolSpec(
        "lookup_population",
        "Population of a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    ToolSpec(
        "add",
        "Add two whole numbers.",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    ),
    ToolSpec(
        "set_timer",
        "Start a countdown timer.",
        {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]},
    ),
]
TOOL_BY_NAME = {t.name: t for t in TOOLS}


def _weather(rng: random.Random) -> tuple[str, dict[str, Any]]:
    city, unit = rng.choice(CITIES), rng.choice(UNITS)
    text = rng.choice(
        [
            f"What's the weather in {city} right now? Give me the temperature in {unit}.",
            f"Is it cold in {city} today? Use {unit}.",
            f"Tell me the current weather for {city} in {unit}.",
        ]
    )
    return text, {"city": city, "unit": unit}


def _convert(rng: random.Random) -> tuple[str, dict[str, Any]]:
    amount = rng.choice([5, 20, 75, 120, 250, 1000, 3500])
    src, dst = rng.sample(CURRENCIES, 2)
    text = rng.choice(
        [
            f"How much is {amount} {src} in {dst}?",
            f"Convert {amount} {src} to {dst}.",
            f"I have {amount} {src}. What is that in {dst}?",
        ]
    )
    return text, {"amount": amount, "from_currency": src, "to_currency": dst}


def _population(rng: random.Random) -> tuple[str, dict[str, Any]]:
    city = rng.choice(CITIES)
    text = rng.choice(
        [f"How many people live in {city}?", f"What is the population of {city}?", f"Population of {city}, please."]
    )
    return text, {"city": city}


def _add(rng: random.Random) -> tuple[str, dict[str, Any]]:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    text = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}.", f"Compute the sum of {a} and {b}."])
    return text, {"a": a, "b": b}


def _timer(rng: random.Random) -> tuple[str, dict[str, Any]]:
    minutes = rng.choice([1, 3, 5, 10, 15, 25, 45, 90])
    text = rng.choice(
        [f"Set a timer for {minutes} minutes.", f"Start a {minutes} minute countdown.", f"Remind me in {minutes} minutes."]
    )
    return text, {"minutes": minutes}


_MAKERS = {
    "get_weather": _weather,
    "convert_currency": _convert,
    "lookup_population": _population,
    "add": _add,
    "set_timer": _timer,
}


def make_prompts(n: int = 50, seed: int = 14) -> list[dict[str, Any]]:
    """``n`` requests, the tools in turn (10 each for 50), phrasing and values drawn from ``seed``."""
    rng = random.Random(seed)
    names = list(_MAKERS)
    rows = []
    for i in range(n):
        tool = names[i % len(names)]
        text, args = _MAKERS[tool](rng)
        rows.append({"id": f"tool-{i:02d}", "request": text, "tool": tool, "arguments": args})
    return rows


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(got, str) and got.strip().lower() == expected.lower()
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(expected)
    return bool(got == expected)


def _valid_args(tool: ToolSpec, args: dict[str, Any]) -> bool:
    from jsonschema import ValidationError, validate

    schema = {**tool.parameters, "additionalProperties": False}
    try:
        validate(args, schema)
    except ValidationError:
        return False
    return True


def _json_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The first JSON object anywhere in ``text`` with a string ``name`` and an object
    ``arguments`` (or ``parameters``): a call written without the ``<tool_call>`` tags."""
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            data, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            args = data.get("arguments", data.get("parameters"))
            if isinstance(args, dict):
                return data["name"], args
    return None


def _grade(row: dict[str, Any], call: tuple[str, dict[str, Any]] | None) -> tuple[bool, bool, bool]:
    if call is None:
        return False, False, False
    name, args = call
    valid = name in TOOL_BY_NAME and _valid_args(TOOL_BY_NAME[name], args)
    right_tool = valid and name == row["tool"]
    right_args = (
        right_tool
        and set(args) == set(row["arguments"])
        and all(_same(v, args.get(k)) for k, v in row["arguments"].items())
    )
    return bool(valid), bool(right_tool), bool(right_args)


def score(row: dict[str, Any], text: str) -> dict[str, Any]:
    """How one reply did: parsed into a valid call, right tool, right tool and arguments.

    Strict: what the adapters parse (a ``<tool_call>`` block). ``lenient_*``: any JSON object
    with a name and arguments in the reply (a call in the wrong format still counts).
    """
    parsed = parse_tool_calls(text)
    call = (parsed.calls[0].name, parsed.calls[0].arguments) if parsed.calls else None
    valid, right_tool, right_args = _grade(row, call)
    loose = call or _json_call(text)
    lenient_valid, lenient_tool, lenient_args = _grade(row, loose)
    return {
        "valid": valid,
        "right_tool": right_tool,
        "right_args": right_args,
        "lenient_valid": lenient_valid,
        "lenient_right_tool": lenient_tool,
        "lenient_right_args": lenient_args,
        "call": None if call is None else {"name": call[0], "arguments": call[1]},
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares over one mode's replies."""
    n = len(results)
    out: dict[str, Any] = {"n": n}
    for key, field in (
        ("valid", "valid"),
        ("right_tool", "right_tool"),
        ("right_tool_and_args", "right_args"),
        ("lenient_valid", "lenient_valid"),
        ("lenient_right_tool", "lenient_right_tool"),
        ("lenient_right_tool_and_args", "lenient_right_args"),
    ):
        out[key] = sum(r[field] for r in results) / n
    out["seconds_per_call"] = sum(r["seconds"] for r in results) / n
    out["tokens_per_call"] = sum(r["generated_tokens"] for r in results) / n
    out["cut_by_token_limit"] = sum(r["finish_reason"] == "length" for r in results) / n
    return out


def print_table(summary: dict[str, Any], path: Path) -> None:
    print(f"\n{summary['model']}, max_new_tokens={summary['max_new_tokens']} -> {path}")
    print(
        "| mode | requests | valid call | right tool | right tool + args | any JSON call: right tool + args "
        "| s / call | tokens / call | cut by limit |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in MODES:
        if mode not in summary:
            continue
        m = summary[mode]
        print(
            f"| {mode} | {m['n']} | {m['valid']:.0%} | {m['right_tool']:.0%} | {m['right_tool_and_args']:.0%} | "
            f"{m['lenient_right_tool_and_args']:.0%} | {m['seconds_per_call']:.2f} | {m['tokens_per_call']:.1f} | "
            f"{m['cut_by_token_limit']:.0%} |"
        )


def rescore(path: Path) -> None:
    """Recompute every score and summary of a results file from its saved replies."""
    data = json.loads(path.read_text())
    prompts = {p["id"]: p for p in make_prompts(data["generated"], data["seed"])}
    rows = [{**r, **score(prompts[r["id"]], r["text"])} for r in data["rows"]]
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if mine:
            data[mode] = summarize(mine)
    data["rows"] = rows
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print_table(data, path)


MODES = ("grammar", "free", "free_no_ngram")


def run(tracer: Tracer, rows: list[dict[str, Any]], max_new_tokens: int, modes: list[str]) -> dict[str, Any]:
    grammar = tool_call_grammar(TOOLS, "required", parallel=False)
    out: dict[str, Any] = {"rows": []}
    for mode in modes:
        extra = {"no_repeat_ngram_size": 0} if mode == "free_no_ngram" else {}
        results = []
        for row in rows:
            messages = [{"role": "user", "content": row["request"]}]
            t0 = time.perf_counter()
            answer = None
            for event in tracer.chat(
                messages,
                tools=TOOLS,
                parallel_tool_calls=False,
                grammar=grammar if mode == "grammar" else None,
                max_new_tokens=max_new_tokens,
                threaded=False,
                **extra,
            ):
                if isinstance(event, FinalEvent):
                    answer = event.answer
            seconds = time.perf_counter() - t0
            assert answer is not None
            result = {
                "id": row["id"],
                "mode": mode,
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "generated_tokens": answer.generated_tokens,
                "seconds": round(seconds, 3),
                **score(row, answer.text),
            }
            results.append(result)
            print(
                f"{mode:13s} {row['id']} valid={result['valid']!s:5} tool={result['right_tool']!s:5} "
                f"args={result['right_args']!s:5} {seconds:5.1f}s {answer.text[:90]!r}",
                flush=True,
            )
        out[mode] = summarize(results)
        out["rows"].extend(results)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="requests generated")
    ap.add_argument("--limit", type=int, default=None, help="run only the first N requests (slow models)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--max-new-tokens", type=int, default=56)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/tool_use-<model>.json")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--rescore", action="store_true", help="only recompute the scores of the results file")
    args = ap.parse_args()
    if args.rescore:
        rescore(Path(args.out or f"benchmarks/results/tool_use-{args.model}.json"))
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}: choose from {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    rows = make_prompts(args.n, args.seed)
    if args.limit is not None:
        rows = rows[: args.limit]
    t0 = time.perf_counter()
    tracer = Tracer.from_pretrained(args.model)
    load_seconds = time.perf_counter() - t0
    result = run(tracer, rows, args.max_new_tokens, modes)
    path = Path(args.out or f"benchmarks/results/tool_use-{args.model}.json")
    settings = {"model": args.model, "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    if path.is_file():  # keep the other modes' results of the same run settings
        old = json.loads(path.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            for mode in MODES:
                if mode not in modes and mode in old:
                    result[mode] = old[mode]
                    result["rows"].extend(r for r in old["rows"] if r["mode"] == mode)
    summary = {
        "model": args.model,
        "requests": max(result[m]["n"] for m in MODES if m in result),
        "generated": args.n,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "template_takes_tools": "tools" in str(getattr(tracer.tokenizer, "chat_template", "") or ""),
        "load_seconds": round(load_seconds, 1),
        **{mode: result[mode] for mode in MODES if mode in result},
        "torch": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**summary, "rows": result["rows"]}, indent=1, ensure_ascii=False) + "\n")
    print_table(summary, path)

if __name__ == "__main__":
    main()
