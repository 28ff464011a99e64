"""Exact attention capture during decoding, at about the cost of plain sdpa.

Asking a model for ``output_attentions`` forces eager attention and materialises every
layer's full ``(heads, N, N)`` matrix. Instead we register an attention function with
transformers' ``AttentionInterface``: it delegates the layer output to sdpa unchanged (so
traced and untraced generation produce the same tokens) and, only while a
:class:`CaptureSession` is active in the current context, recomputes the softmax of the query
rows we need against the cached keys (GQA-aware, fp32), reduces them with the signal and adds
them to the session. Decode steps need one row per layer; the prefill needs only the last
prompt row (the first generated token's attention, exact) and the reference rows used for bias
correction.

State lives in a :class:`contextvars.ContextVar`, so two generations in two threads on one
model never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from omnitrace_core.errors import CaptureError
from omnitrace_core.signals import Signal

ATTENTION_NAME = "omnitrace_sdpa"

_ACTIVE: contextvars.ContextVar[CaptureSession | None] = contextvars.ContextVar(
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
    """

    def __init__(
        self,
        signal: Signal,
        num_layers: int,
        prefill_positions: Iterable[int] = (),
        grad_mode: bool = False,
    ) -> None:
        self.signal = signal
        self.layers = frozenset(signal.layers(num_layers))
        if not self.layers:
            raise CaptureError(f"signal {signal.name!r} selects no layers")
        self.prefill_positions = sorted(set(prefill_positions))
        self.grad_mode = grad_mode
        self.rows: dict[int, torch.Tensor] = {}
        self.layer_calls: dict[int, int] = {}
        self.grad_probs: dict[int, torch.Tensor] = {}

    def row(self, position: int) -> torch.Tensor:
        """The reduced attention row of the query at ``position`` (fp32, over keys ``0..position``)."""
        return self.rows[position]

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
        share = 1.0 / len(self.layers)
        for i, r in enumerate(rel):
            pos = past + r
            contrib = reduced[i, : pos + 1] * share
            prev = self.rows.get(pos)
            self.rows[pos] = contrib if prev is None else prev + contrib


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
        return _in_graph_attention(session, module, query, key, value, attention_mask, scaling)
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
def capturing(session: CaptureSession) -> Iterator[CaptureSession]:
    """Activate ``session`` for forward passes run in the current context."""
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)
