"""Captured rows must equal eager attention exactly (up to float error)."""

from __future__ import annotations

import threading

import pytest
import torch

from omnitrace_core.capture import BatchCaptureSession, CaptureSession, capturing, install
from omnitrace_core.capture_kernels import decode_attention
from omnitrace_core.errors import CaptureError
from omnitrace_core.signals import AttMean, LearnedHeads, RawAtt, Signal
from tests.conftest import build_tiny_model


class PerLayer(Signal):
    """Keeps only one layer so the test can compare layer by layer."""

    name = "per-layer-test"

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def layers(self, num_layers: int) -> list[int]:
        return [self.layer]


def _eager_attentions(model, ids):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True, use_cache=False)
    finally:
        install(model)
    return [a[0].float() for a in out.attentions]  # (H, N, N) per layer


@pytest.fixture()
def model(tiny_tokenizer):
    m = build_tiny_model(len(tiny_tokenizer), seed=3)
    install(m)
    return m


def test_prefill_rows_match_eager(model):
    ids = torch.randint(0, 300, (1, 40))
    eager = _eager_attentions(model, ids)
    positions = [5, 17, 39]
    for layer in range(len(eager)):
        session = CaptureSession(PerLayer(layer), len(eager), prefill_positions=positions)
        with capturing(session), torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for p in positions:
            expected = eager[layer][:, p, : p + 1].mean(0)
            assert torch.max(torch.abs(session.row(p) - expected)) <= 1e-5


@pytest.mark.parametrize("mode", ["fused", "exact"])
def test_decode_rows_match_eager_over_the_full_sequence(model, mode):
    prompt = torch.randint(0, 300, (1, 12))
    session = CaptureSession(AttMean(), 3, prefill_positions=[11], mode=mode)
    with capturing(session), torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
    full = out[:, :-1]  # the last token is never used as a query
    eager = _eager_attentions(model, full)
    mean = torch.stack([a for a in eager]).mean(0).mean(0)  # (N, N) mean over layers and heads
    for p in range(11, full.shape[1]):
        assert torch.max(torch.abs(session.row(p) - mean[p, : p + 1])) <= 1e-5


def test_rawatt_reads_only_the_last_layer(model):
    ids = torch.randint(0, 300, (1, 20))
    eager = _eager_attentions(model, ids)
    session = CaptureSession(RawAtt(), 3, prefill_positions=[19])
    with capturing(session), torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert torch.max(torch.abs(session.row(19) - eager[-1][:, 19].mean(0))) <= 1e-5


def test_capture_does_not_change_outputs(model):
    ids = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        session = CaptureSession(AttMean(), 3, prefill_positions=[15])
        with capturing(session):
            traced = model(input_ids=ids).logits
    assert torch.equal(plain, traced)


def test_sessions_in_two_threads_do_not_mix(model):
    ids_a = torch.randint(0, 300, (1, 30))
    ids_b = torch.randint(0, 300, (1, 22))
    results: dict[str, CaptureSession] = {}

    def run(name, ids):
        session = CaptureSession(AttMean(), 3, prefill_positions=[ids.shape[1] - 1])
        with capturing(session), torch.no_grad():
            for _ in range(3):
                model(input_ids=ids, use_cache=False)
        results[name] = session

    threads = [threading.Thread(target=run, args=(n, i)) for n, i in (("a", ids_a), ("b", ids_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results["a"].rows) == {29}
    assert set(results["b"].rows) == {21}
    # three identical passes accumulate three times the single-pass row
    single = CaptureSession(AttMean(), 3, prefill_positions=[29])
    with capturing(single), torch.no_grad():
        model(input_ids=ids_a, use_cache=False)
    assert torch.allclose(results["a"].row(29), 3 * single.row(29), atol=1e-5)


def test_no_session_means_no_capture_state(model):
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        model(input_ids=ids)  # must simply run


def test_signal_without_layers_is_rejected():
    class NoLayers(Signal):
        name = "none-test"

        def layers(self, num_layers: int) -> list[int]:
            return []

    with pytest.raises(CaptureError, match="selects no layers"):
        CaptureSession(NoLayers(), 3)


def test_model_without_attention_interface_is_rejected():
    class Legacy(torch.nn.Module):
        def _can_set_attn_implementation(self) -> bool:
            return False

    with pytest.raises(CaptureError, match="AttentionInterface"):
        install(Legacy())


def _greedy(model, prompt, new=10, session=None, **kw):
    import contextlib

    ctx = capturing(session) if session is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        return model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
            **kw,
        )


@pytest.mark.parametrize("mode", ["fused", "exact"])
def test_traced_greedy_tokens_equal_plain_sdpa(model, mode):
    for seed in range(3):
        torch.manual_seed(seed)
        prompt = torch.randint(0, 300, (1, 20 + 7 * seed))
        plain = _greedy(model, prompt)
        traced = _greedy(
            model, prompt, session=CaptureSession(AttMean(), 3, [prompt.shape[1] - 1], mode=mode)
        )
        assert torch.equal(plain.sequences, traced.sequences)
        diff = max(float((a - b).abs().max()) for a, b in zip(plain.logits, traced.logits, strict=True))
        if mode == "exact":
            assert diff == 0.0  # sdpa computes the output: bit-identical
        else:
            assert diff < 1e-4


def test_decode_kernel_equals_sdpa_with_gqa_and_padding():
    torch.manual_seed(0)
    q = torch.randn(3, 8, 1, 16)
    k = torch.randn(3, 2, 40, 16)
    v = torch.randn(3, 2, 40, 16)
    mask = torch.ones(3, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., :7] = False  # left padding of row 1
    mask[2, ..., :30] = False
    out, probs = decode_attention(q, k, v, mask, None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    assert probs.shape == (3, 8, 40)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 8))
    assert float(probs[1, :, :7].abs().max()) == 0.0 and float(probs[2, :, :30].abs().max()) == 0.0
    # bf16 inputs: scores in bf16 (fp32 accumulation), softmax fp32, output bf16
    out16, probs16 = decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, None)
    assert out16.dtype == torch.bfloat16 and probs16.dtype == torch.float32
    assert torch.allclose(out16.float(), ref.transpose(1, 2), atol=3e-2)


def _signals(kind, heads):
    """One signal per row of a 3-row batch: shared AttMean, shared learned heads (a weighted
    sum, reduced per layer), or a different signal object per row (each row reduced alone)."""
    if kind == "attmean":
        return [AttMean()] * 3
    weights = torch.rand(3, heads, generator=torch.Generator().manual_seed(5))
    weights[1] = 0.0  # a layer without weight is not read at all
    if kind == "learned":
        return [LearnedHeads(weights)] * 3
    # rows of a batch read the same layers: the middle row weighs every head of layers 0 and 2
    return [
        LearnedHeads(weights),
        LearnedHeads(torch.ones(3, heads) * weights.bool()),
        LearnedHeads(weights * 2),
    ]


@pytest.mark.parametrize("mode", ["fused", "exact"])
@pytest.mark.parametrize("kind", ["attmean", "learned", "separate"])
def test_batch_capture_rows_equal_rows_of_each_prompt_alone(model, mode, kind):
    torch.manual_seed(4)
    prompts = [torch.randint(3, 300, (n,)).tolist() for n in (14, 9, 20)]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    signals = _signals(kind, model.config.num_attention_heads)
    sessions = [
        CaptureSession(sig, 3, [2, len(p) - 1], mode=mode) for sig, p in zip(signals, prompts, strict=True)
    ]
    batch = BatchCaptureSession(sessions, [width - len(p) for p in prompts])
    with capturing(batch), torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    for b, p in enumerate(prompts):
        alone = CaptureSession(signals[b], 3, [2, len(p) - 1], mode=mode)
        single = _greedy(model, torch.tensor([p]), new=6, session=alone)
        assert out[b, width:].tolist() == single.sequences[0, len(p) :].tolist()
        assert set(sessions[b].rows) == set(alone.rows)
        for pos, row in alone.rows.items():
            assert sessions[b].row(pos).shape == row.shape
            assert torch.max(torch.abs(sessions[b].row(pos) - row)) <= 1e-5


def test_decode_capture_holds_at_most_one_step_of_probabilities(model):
    """Each decode step is reduced as soon as its last captured layer reports: nothing of a
    finished step stays pending (memory stays one step's probabilities, however long the answer)."""
    prompt = torch.randint(0, 300, (1, 10))
    session = CaptureSession(AttMean(), 3, [9])
    held = []
    original = session._steps.add

    def spy(pos, layer, probs):
        done = original(pos, layer, probs)
        held.append(len(session._steps._running))
        return done

    session._steps.add = spy
    _greedy(model, prompt, new=8, session=session)
    assert held and max(held) <= 1 and held[-1] == 0
    assert sorted(session.rows) == list(range(9, 17))


class _Layer(torch.nn.Module):
    def __init__(self, idx: int) -> None:
        super().__init__()
        self.layer_idx = idx


@pytest.mark.parametrize(
    "signal", [AttMean(), LearnedHeads(torch.rand(3, 4) + 0.1)], ids=["attmean", "learned"]
)
def test_a_decode_step_missing_a_layer_is_finished_by_the_next_step(signal):
    """A layer that did not run the fused kernel (say a variant it does not reproduce) leaves its
    step short of layers: the next step's first layer finishes it over the layers that came, as
    the row a reader would get from ``row()``."""
    torch.manual_seed(0)
    session = CaptureSession(signal, 3, [])
    p5 = [torch.softmax(torch.randn(1, 4, 6), dim=-1) for _ in range(2)]
    session.observe_decode(_Layer(0), p5[0])
    session.observe_decode(_Layer(1), p5[1])
    assert 5 not in session.rows  # still waiting for layer 2
    session.observe_decode(_Layer(0), torch.softmax(torch.randn(1, 4, 7), dim=-1))
    assert 5 in session.rows and 6 not in session.rows
    expected = sum(signal.reduce(p.transpose(0, 1), i)[0] for i, p in enumerate(p5)) / 3
    assert torch.allclose(session.row(5), expected, atol=1e-6)
    assert session.row(6).shape == (7,)  # the unfinished newest step, read over the layer that came
