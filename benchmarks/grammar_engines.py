"""Per-token cost of grammar-constrained decoding on the packaged SmolLM2-135M (CPU, greedy).

Compares unconstrained decoding with llguidance and xgrammar logits processors over one small
JSON schema. Each engine: grammar compile time, then N timed ``generate`` calls; reports
seconds per generated token and whether the output parses as JSON valid for the schema.

    PYTHONPATH=core:. OMP_NUM_THREADS=1 python benchmarks/grammar_engines.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from omnitrace_core.decoding import apply_bitmask

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "founded": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "founded", "city"],
    "additionalProperties": False,
}
PROMPT = (
    "Valbrook Works was founded in 1905 in Cedar Falls. It makes water filters.\n\n"
    "Extract the company as JSON with keys name, founded, city."
)


class _Timed(LogitsProcessor):
    """Wraps a processor and adds up the time spent inside it (the grammar's own cost)."""

    def __init__(self, inner: Any, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.clock[0] += time.perf_counter() - t0
        return out


class _LLG(LogitsProcessor):
    def __init__(self, lltok: Any, grammar: str, vocab: int) -> None:
        import llguidance
        import llguidance.torch as lt

        self.m = llguidance.LLMatcher(lltok, grammar)
        self.mask = lt.allocate_token_bitmask(1, vocab)
        self.lt = lt
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        else:
            self.m.consume_token(int(input_ids[0, -1]))
        self.lt.fill_next_token_bitmask(self.m, self.mask)
        return apply_bitmask(scores, self.mask)  # the core's plain-torch mask (no torch.compile)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from jsonschema import validate

    from omnitrace_core.models import load_model

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    vocab = model.get_output_embeddings().weight.shape[0]
    engines: dict[str, Any] = {"none": lambda: []}
    setup: dict[str, float] = {}

    t0 = time.perf_counter()
    import llguidance
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    setup["llguidance"] = time.perf_counter() - t0
    engines["llguidance"] = lambda: [_LLG(lltok, grammar, vocab)]

    try:  # not a project dependency: pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi to compare
        t0 = time.perf_counter()
        import xgrammar as xgr
        import xgrammar.contrib.hf

        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        setup["xgrammar"] = time.perf_counter() - t0
        engines["xgrammar"] = lambda: [xgrammar.contrib.hf.LogitsProcessor(compiled)]
    except ImportError:
        print("xgrammar is not installed: compared with llguidance only")

    rows = []
    for name, make in engines.items():
        times, n_tok, outs, inside = [], 0, [], []
        for _ in range(args.runs + 1):  # first run warms up
            clock = [0.0]
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                     do_sample=False, logits_processor=LogitsProcessorList([_Timed(p, clock) for p in make()]),
                                     pad_token_id=tok.eos_token_id)
            times.append(time.perf_counter() - t0)
            inside.append(clock[0])
            n_tok = out.shape[1] - ids.shape[1]
            outs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        per_tok = sum(times[1:]) / args.runs / max(n_tok, 1)
        grammar_ms = 1000 * sum(inside[1:]) / args.runs / max(n_tok, 1)
        try:
            validate(json.loads(outs[-1]), SCHEMA)
            valid = True
        except Exception:
            valid = False
        rows.append({"engine": name, "setup_s": round(setup.get(name, 0.0), 3), "tokens": n_tok,
                     "s_per_token": round(per_tok, 5),
                     "grammar_ms_per_token": round(grammar_ms, 3), "valid": valid, "output": outs[-1][:120]})
    base = rows[0]["s_per_token"]
    for r in rows:
        r["ratio"] = round(r["s_per_token"] / base, 3)
        print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"schema": SCHEMA, "runs": args.runs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
