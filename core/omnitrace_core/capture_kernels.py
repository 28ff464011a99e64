"""The decode-step attention kernel that keeps its probabilities (one pass over the keys).

While a capture session is active, a decoding step (one query per sequence) of a captured
layer runs this instead of sdpa followed by a second softmax over the same keys: the scores
are computed once in the model's dtype (the matmul accumulates in fp32), the softmax runs in
fp32, and those same probabilities (cast to the value dtype) multiply the values. The layer
output is what the captured row describes, and no copy of the key cache is made (the exact
path's ``key.float()`` copied a bf16 cache to fp32 at every layer of every step).

For an fp32 model this is sdpa's arithmetic up to summation order (``tests`` and
``benchmarks/capture_identity.py`` check greedy tokens and report the logits' difference); the
recompute path stays available as ``TracerConfig(capture="exact")``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def fusable(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    """False for attention variants this kernel does not reproduce (soft-capping, learned
    sinks, position biases): those keep sdpa and the recompute."""
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return False
    return kwargs.get("s_aux") is None and getattr(module, "sinks", None) is None


class Workspace:
    """Reusable buffers for the temporaries of one decoding's decode steps.

    A decode step's scores and probabilities (``heads x keys`` floats, ~100 KB at 2k keys) would
    otherwise be allocated and freed at every layer of every step, a little larger each step,
    between the captured rows that live until the answer is done, which fragments the heap
    (docs/results-core.md, overhead). One flat buffer per name, grown by a quarter when too
    small; a view of it is valid until the next ``get`` of that name, so only the thread that
    decodes may use it.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(n + n // 4 + 1024, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step's attention and its probabilities.

    Args:
        query: ``(B, H, 1, D)``.
        key, value: ``(B, Hkv, K, D)`` (grouped-query heads share a key / value head).
        attention_mask: None, or a boolean / additive mask broadcastable to ``(B, 1, 1, K)``
            (left padding of a batch).
        scaling: Score scale (default ``D ** -0.5``).
        workspace: Where the scores and probabilities go (fp32 models); the returned
            probabilities are then a view of it, valid until the next call with it.

    Returns:
        ``(output, probs)``: the layer's attention output ``(B, 1, H, D)`` in the query's layout
        (as transformers' attention functions return it) and the fp32 probabilities ``(B, H, K)``.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query.reshape(batch, kv_heads, group, head_dim)
    # Scores in the model's dtype (fp32 accumulation inside the matmul), then fp32 from here on.
    shape = (batch, kv_heads, group, kv_len)
    if workspace is not None and query.dtype == torch.float32:
        scores = torch.matmul(q, key.transpose(2, 3), out=workspace.get("scores", shape, q)).mul_(scale)
    else:
        scores = torch.matmul(q, key.transpose(2, 3)).float().mul_(scale)  # (B, Hkv, G, K)
    if attention_mask is not None:
        m = attention_mask[..., -1:, :kv_len]  # (B or 1, 1 or H, 1, K)
        m = m.reshape(m.shape[0], -1, 1, kv_len)
        if m.shape[1] == heads and heads != kv_heads:
            m = m.reshape(m.shape[0], kv_heads, group, kv_len)
        # in place: ``scores`` is this call's own tensor
        scores = scores.masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else scores.add_(m.float())
    if workspace is not None:
        probs = torch.softmax(scores, dim=-1, out=workspace.get("probs", shape, scores))
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.to(value.dtype), value)  # (B, Hkv, G, D)
    return out.reshape(batch, 1, heads, head_dim), probs.reshape(batch, heads, kv_len)
