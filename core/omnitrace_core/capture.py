"""Exact attention capture during decoding, at about the cost of plain sdpa.

Asking a model for ``output_attentions`` forces eager attention and materialises every
layer's full ``(heads, N, N)`` matrix. Instead we register an attention function with
transformers' ``AttentionInterface``. Outside a :class:`CaptureSession` it is sdpa. Inside one:

- a **prefill** (several queries) runs sdpa, then computes the softmax of only the query rows
  we need against the keys (GQA-aware, fp32): the last prompt row (the first generated token's
  attention) and the reference rows used for bias correction;
- a **decode step** (one query) of a captured layer runs
  :func:`~omnitrace_core.capture_kernels.decode_attention` (mode ``fused``, the default): the
  attention is computed once and its probabilities are kept, with no second pass over the keys.
  Mode ``exact`` keeps sdpa for the output and recomputes the row (the earlier behaviour).

The rows are reduced with the signal and added to the session. :class:`BatchCaptureSession`
does the same for a left-padded batch, one :class:`CaptureSession` per row in the row's own
positions.

State lives in a :class:`contextvars.ContextVar`, so two generations in two threads on one
model never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch

from omnitrace_core.capture_kernels import Workspace, decode_attention, fusable
from omnitrace_core.errors import CaptureError
from omnitrace_core.signals import Signal

ATTENTION_NAME = "omnitrace_sdpa"

CaptureMode = Literal["fused", "exact"]

_ACTIVE: contextvars.ContextVar[CaptureSession | BatchCaptureSession | None] = contextvars.ContextVar(
    "omnitrace_capture", default=None
)
_REGISTER_LOCK = threading.Lock()
_REGISTERED = False


class CaptureSession:
    """Collects one reduced attention row per wanted query position during forward passes.

    Args:
        signal: Decides layers and head reduction.
        num_layers: Decoder layers of the model.
        prefill_positions: Absolute query positions to capture when a forward pass has more
            than one query (prefill / teacher forcing). Single-query (decode) passes are
            always captured.
        grad_mode: Compute attention in-graph and keep the probabilities for gradients
            (used by gradient signals; O(N^2) memory).
        mode: ``fused`` (default): decode steps of captured layers compute attention once and
            keep its probabilities; ``exact``: sdpa output, row recomputed (a second pass over
            the keys; bit-identical layer outputs to plain sdpa).
    """

    def __init__(
        self,
        signal: Signal,
        num_layers: int,
        prefill_positions: Iterable[int] = (),
        grad_mode: bool = False,
        mode: CaptureMode = "fused",
    ) -> None:
        self.signal = signal
        self.layers = frozenset(signal.layers(num_layers))
        if not self.layers:
            raise CaptureError(f"signal {signal.name!r} selects no layers")
        if mode not in ("fused", "exact"):
            raise CaptureError(f"capture mode must be 'fused' or 'exact', got {mode!r}")
        self.prefill_positions = sorted(set(prefill_positions))
        self.grad_mode = grad_mode
        self.mode: CaptureMode = mode
        self._share = 1.0 / len(self.layers)
        self._rows: dict[int, torch.Tensor] = {}
        # Decode steps are reduced layer by layer into one running sum per step (see
        # _DecodeSteps); a row is published once the step's last captured layer has reported.
        self.workspace = Workspace()
        self._steps = _DecodeSteps(signal, self.layers, self.workspace)
        self.layer_calls: dict[int, int] = {}
        self.grad_probs: dict[int, torch.Tensor] = {}

    @property
    def rows(self) -> dict[int, torch.Tensor]:
        """Reduced rows by absolute query position (fp32, each over keys ``0..position``)."""
        return self._rows

    def row(self, position: int) -> torch.Tensor:
        """The reduced attention row of the query at ``position`` (fp32, over keys ``0..position``)."""
        if position not in self._rows:  # a decode step whose layers never all came
            partial = self._steps.take(position)
            if partial is not None:
                self._add(position, partial[0], scaled=True)
        return self._rows[position]

    def release(self, position: int) -> None:
        """Drop the row of ``position`` once its token is mapped.

        A streamed decoding maps each token as soon as its rows exist and never reads them
        again; dropping them keeps the rows alive for one step instead of the whole answer,
        so the heap does not fill with small long-lived blocks between the model's
        short-lived ones (what made the peak memory of long answers swing between runs).
        """
        self._rows.pop(position, None)

    # -- called from the attention function ---------------------------------------------
    def observe(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> None:
        layer = int(getattr(module, "layer_idx", -1))
        self.layer_calls[layer] = self.layer_calls.get(layer, 0) + 1
        if layer not in self.layers:
            return
        if query.shape[0] != 1:
            raise CaptureError("attention capture supports batch size 1 per call")
        q_len, kv_len = query.shape[2], key.shape[2]
        past = kv_len - q_len
        if q_len == 1:
            rel = [0]
        else:
            rel = [p - past for p in self.prefill_positions if past <= p < kv_len]
            if not rel:
                return
        probs = attention_rows(query, key, attention_mask, scaling, rel, past)
        reduced = self.signal.reduce(probs, layer)
        for i, r in enumerate(rel):
            pos = past + r
            self._add(pos, reduced[i, : pos + 1])

    def observe_decode(self, module: torch.nn.Module, probs: torch.Tensor) -> None:
        """A decode step's probabilities ``(1, H, K)`` from the fused kernel (captured layers only)."""
        layer = int(getattr(module, "layer_idx", -1))
        self.layer_calls[layer] = self.layer_calls.get(layer, 0) + 1
        if probs.shape[0] != 1:
            raise CaptureError("attention capture supports batch size 1 per call")
        for pos, done in self._steps.add(probs.shape[-1] - 1, layer, probs):
            self._add(pos, done[0], scaled=True)

    def wants_decode(self, layer: int) -> bool:
        return self.mode == "fused" and layer in self.layers

    def _add(self, pos: int, row: torch.Tensor, scaled: bool = False) -> None:
        """Add reduced rows (over keys ``0..pos``, summed over layers) to the average over
        layers (``scaled``: ``row`` is already multiplied by ``1 / layers``)."""
        contrib = row if scaled else row * self._share
        prev = self._rows.get(pos)
        self._rows[pos] = contrib if prev is None else prev.add_(contrib)


class _DecodeSteps:
    """Reduces decode steps layer by layer: one running sum per step, over the rows of a batch.

    Each captured layer's probabilities ``(R, H, K)`` (``R`` rows: 1, or a batch) are folded
    into the step's sum as they arrive: the mean signals sum the raw probabilities and take the
    head mean once at the end; signals with fixed head weights (:meth:`Signal.head_weights`,
    learned heads) add their weighted head sum with one batched matrix product; others reduce
    each layer to ``(R, K)`` with :meth:`Signal.reduce` and sum those. A step costs one or two
    tensor ops per layer whatever ``R`` is, and no layer's probabilities are held after its
    call. When the step's last layer has reported, :meth:`add` returns the finished ``(R, K)``
    rows already scaled by ``1 / layers``; a step that a newer one overtakes before all its
    layers came (a layer that did not run the fused kernel) is finished then, over the layers
    that did. Always summed in layer order, so a row is the same streamed or not and in a batch
    or alone (up to float summation order across rows).
    """

    def __init__(self, signal: Signal, layers: frozenset[int], workspace: Workspace) -> None:
        self.signal = signal
        self.workspace = workspace
        self.n_layers = len(layers)
        self.share = 1.0 / len(layers)
        self.mean_over_heads = type(signal).reduce is Signal.reduce
        self._running: dict[int, tuple[torch.Tensor, int]] = {}
        self._heads = 1  # of the layers folded in (for the head mean)
        # the weighted path only when every layer read has fixed head weights
        weights = {layer: signal.head_weights(layer) for layer in layers} if not self.mean_over_heads else {}
        self._head_weights: dict[int, torch.Tensor] | None = (
            {k: w.view(1, 1, -1) for k, w in weights.items() if w is not None}
            if weights and all(w is not None for w in weights.values())
            else None
        )
        self._lock = threading.Lock()

    def add(self, pos: int, layer: int, probs: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Fold one layer of step ``pos`` in; the steps finished by it, as ``(pos, rows)``."""
        # One producer (the decoding) adds; a reader only ever takes a step that never finished.
        with self._lock:
            held = self._running.pop(pos, None)
            overtaken = [] if held is not None or not self._running else sorted(self._running)
            stale = [(p, self._running.pop(p)[0]) for p in overtaken]
        finished = [(p, self._finish(acc)) for p, acc in stale]
        acc = None if held is None else held[0]
        self._heads = probs.shape[1]
        if self.mean_over_heads:  # AttMean / RawAtt: head sum per layer, the mean's 1 / H at the end
            rows = (probs.shape[0], probs.shape[2])
            part = torch.sum(probs, dim=1, out=self.workspace.get("part", rows, probs))
            acc = part.clone() if acc is None else acc.add_(part)
        elif (w := self._weights(layer, probs)) is not None:  # a weighted sum over heads: (R, 1, K)
            acc = torch.bmm(w, probs) if acc is None else acc.baddbmm_(w, probs)
        else:  # the signal's own reduction, the rows as its query rows: (R, K)
            part = self.signal.reduce(probs.transpose(0, 1), layer)
            acc = part if acc is None else acc.add_(part)
        seen = 1 if held is None else held[1] + 1
        if seen < self.n_layers:
            with self._lock:
                self._running[pos] = (acc, seen)
        else:
            finished.append((pos, self._finish(acc)))
        return finished

    def _weights(self, layer: int, probs: torch.Tensor) -> torch.Tensor | None:
        """The signal's head weights for ``layer`` as ``(R, 1, H)`` (a broadcast view), or None."""
        if self._head_weights is None:
            return None
        w = self._head_weights[layer]
        if w.device != probs.device or w.dtype != probs.dtype:
            w = self._head_weights[layer] = w.to(device=probs.device, dtype=probs.dtype)
        return w.expand(probs.shape[0], 1, w.shape[-1])

    def take(self, pos: int) -> torch.Tensor | None:
        """A step whose layers never all reported, reduced over those that did (or None)."""
        with self._lock:
            held = self._running.pop(pos, None)
        return None if held is None else self._finish(held[0])

    def positions(self) -> list[int]:
        with self._lock:
            return sorted(self._running)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        if self.mean_over_heads:
            return acc.mul_(self.share / self._heads)
        return acc.mul_(self.share).reshape(acc.shape[0], acc.shape[-1])


class BatchCaptureSession:
    """Capture for a left-padded batch: one :class:`CaptureSession` per row.

    Row ``b``'s prompt starts at padded position ``offsets[b]``; its session sees positions and
    keys in the row's own coordinates (padded position minus the offset), so its rows equal
    those of the same prompt decoded alone.
    """

    grad_mode = False

    def __init__(self, sessions: list[CaptureSession], offsets: list[int]) -> None:
        if not sessions or len(sessions) != len(offsets):
            raise CaptureError("a batch capture needs one session and one offset per row")
        modes = {s.mode for s in sessions}
        layers = {s.layers for s in sessions}
        if len(modes) != 1 or len(layers) != 1:
            raise CaptureError("the rows of a batch capture must share a signal's layers and a mode")
        self.sessions = sessions
        self.offsets = list(offsets)
        self.layers = sessions[0].layers
        self.mode: CaptureMode = sessions[0].mode
        # One reduction for the whole batch when every row reads the same signal (as
        # generate_batch's rows do); otherwise each row reduces its own slice.
        shared = all(s.signal is sessions[0].signal for s in sessions)
        self.workspace = Workspace()
        self._steps = _DecodeSteps(sessions[0].signal, self.layers, self.workspace) if shared else None

    def wants_decode(self, layer: int) -> bool:
        return self.mode == "fused" and layer in self.layers

    def observe(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> None:
        layer = int(getattr(module, "layer_idx", -1))
        if layer not in self.layers:
            return
        q_len, kv_len = query.shape[2], key.shape[2]
        past = kv_len - q_len
        for b, (session, off) in enumerate(zip(self.sessions, self.offsets, strict=True)):
            session.layer_calls[layer] = session.layer_calls.get(layer, 0) + 1
            if q_len == 1:
                rel = [0]
            else:
                rel = [p + off - past for p in session.prefill_positions if past <= p + off < kv_len]
                if not rel:
                    continue
            mask = (
                attention_mask[b : b + 1]
                if attention_mask is not None and attention_mask.shape[0] > 1
                else attention_mask
            )
            probs = attention_rows(query[b : b + 1], key[b : b + 1], mask, scaling, rel, past)
            reduced = session.signal.reduce(probs, layer)
            for i, r in enumerate(rel):
                pos = past + r
                session._add(pos - off, reduced[i, off : pos + 1])

    def observe_decode(self, module: torch.nn.Module, probs: torch.Tensor) -> None:
        """A decode step's probabilities ``(B, H, K)``: reduced for the whole batch at once (one
        running sum per step), then each row's slice from its own first key is its session's row."""
        layer = int(getattr(module, "layer_idx", -1))
        for session in self.sessions:
            session.layer_calls[layer] = session.layer_calls.get(layer, 0) + 1
        pos = probs.shape[-1] - 1
        if self._steps is None:
            for b, (session, off) in enumerate(zip(self.sessions, self.offsets, strict=True)):
                for p, row in session._steps.add(pos - off, layer, probs[b : b + 1, :, off:]):
                    session._add(p, row[0], scaled=True)
            return
        for p, done in self._steps.add(pos, layer, probs):
            self._hand_over(p, done)

    def finish(self) -> None:
        """Hand any decode step whose layers never all reported to the rows (normally none)."""
        if self._steps is None:
            return  # each row's session hands its own over when the row is read
        for pos in self._steps.positions():
            done = self._steps.take(pos)
            if done is not None:
                self._hand_over(pos, done)

    def _hand_over(self, pos: int, done: torch.Tensor) -> None:
        """Give each row's session its slice (from its own first key) of a finished step."""
        for b, (session, off) in enumerate(zip(self.sessions, self.offsets, strict=True)):
            session._add(pos - off, done[b, off:], scaled=True)


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    rows: list[int],
    past: int,
) -> torch.Tensor:
    """Softmax attention of the selected query rows over all keys, fp32, shape (heads, rows, keys)."""
    heads, head_dim = query.shape[1], query.shape[3]
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else head_dim**-0.5
    idx = torch.as_tensor(rows, device=query.device)
    q = query[0].index_select(1, idx).float()  # (H, r, D)
    k = key[0].float()  # (Hkv, K, D)
    q = q.view(kv_heads, group * len(rows), head_dim)
    scores = torch.bmm(q, k.transpose(1, 2)).view(heads, len(rows), -1) * scale
    kv_len = scores.shape[-1]
    if attention_mask is not None:
        m = attention_mask[0]
        m = m.index_select(-2, idx) if m.shape[-2] > 1 else m
        m = m[..., :kv_len]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    else:
        q_pos = (idx + past).view(1, -1, 1)
        k_pos = torch.arange(kv_len, device=query.device).view(1, 1, -1)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _traced_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    session = _ACTIVE.get()
    if session is not None and session.grad_mode:
        assert isinstance(session, CaptureSession)
        return _in_graph_attention(session, module, query, key, value, attention_mask, scaling)
    if (
        session is not None
        and query.shape[2] == 1
        and session.wants_decode(int(getattr(module, "layer_idx", -1)))
        and fusable(module, kwargs)
    ):
        # generate() already runs without gradients: entering no_grad again per layer costs
        # more than the check
        with torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext():
            fused, probs = decode_attention(query, key, value, attention_mask, scaling, session.workspace)
            session.observe_decode(module, probs)
        return fused, None
    out = sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal,
        **kwargs,
    )
    if session is not None:
        with torch.no_grad():
            session.observe(module, query, key, attention_mask, scaling)
    return out


def _in_graph_attention(
    session: CaptureSession,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention whose probabilities stay in the autograd graph (for gradient signals)."""
    layer = int(getattr(module, "layer_idx", -1))
    session.layer_calls[layer] = session.layer_calls.get(layer, 0) + 1
    q_len, kv_len = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * scale
    if attention_mask is not None:
        m = attention_mask[..., :kv_len]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    else:
        past = kv_len - q_len
        q_pos = torch.arange(q_len, device=query.device).view(-1, 1) + past
        k_pos = torch.arange(kv_len, device=query.device).view(1, -1)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if layer in session.layers:
        session.grad_probs[layer] = probs
    out = torch.matmul(probs.to(value.dtype), v).transpose(1, 2).contiguous()
    return out, None


def register_attention() -> None:
    """Register the capturing attention (and sdpa's mask builder) with transformers, once."""
    global _REGISTERED
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, _traced_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _REGISTERED = True


def install(model: Any) -> None:
    """Route the model's attention through the capturing function.

    Raises:
        CaptureError: if the model does not dispatch attention through AttentionInterface.
    """
    register_attention()
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        raise CaptureError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
            "so its attention cannot be captured"
        )
    try:
        model.set_attn_implementation(_implementation_for(model))
    except Exception as exc:
        raise CaptureError(f"cannot install attention capture on {type(model).__name__}: {exc}") from exc


def _implementation_for(model: Any) -> str | dict[str, str]:
    """The capturing attention for the text decoder only.

    A vision-language / omni model keeps its vision and audio encoders on their own attention:
    they are not what the answer attends to, and the in-graph path of gradient signals would
    give their bidirectional attention a causal mask.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return ATTENTION_NAME
    text_config = config.get_text_config()
    for key in getattr(config, "sub_configs", None) or {}:
        if text_config is not config and getattr(config, key, None) is text_config:
            return {key: ATTENTION_NAME}
    return ATTENTION_NAME


@contextlib.contextmanager
def capturing(
    session: CaptureSession | BatchCaptureSession,
) -> Iterator[CaptureSession | BatchCaptureSession]:
    """Activate ``session`` for forward passes run in the current context."""
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)
