"""Attribution signals: how one layer's attention probabilities become a score per position.

A signal picks the layers it reads and reduces a layer's per-head probabilities (for the
captured query rows) to one score per key position. The capture step averages the reduced rows
over the chosen layers, so memory stays one row per generated token whatever the signal.

Built in (paper Section 3):
- ``attmean``: attention averaged over all layers and heads.
- ``rawatt``: the last layer's attention, averaged over heads.
- ``attgrads``: attention times the gradient of the generated token's log-probability with
  respect to that attention, positive part, averaged over layers and heads. Needs a backward
  pass per token, so it runs teacher-forced after decoding (opt-in).

Plug in your own by subclassing :class:`Signal` and calling :func:`register_signal`.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar

import torch

from omnitrace_core.errors import InvalidInputError, UnknownNameError


class Signal(ABC):  # noqa: B024 - a base with sensible defaults, not an interface of stubs
    """Base class of attribution signals.

    Attributes:
        name: Registry name (lower case).
        needs_gradients: If true, rows are computed teacher-forced with a backward pass per
            token and :meth:`reduce` receives ``probs * grads`` instead of ``probs``.
    """

    name: ClassVar[str] = "custom"
    needs_gradients: ClassVar[bool] = False

    def layers(self, num_layers: int) -> list[int]:
        """Indices of the layers this signal reads (default: all)."""
        return list(range(num_layers))

    def reduce(self, probs: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Reduce ``(heads, rows, keys)`` fp32 scores of one layer to ``(rows, keys)``."""
        return probs.mean(dim=0)

    def head_weights(self, layer_idx: int) -> torch.Tensor | None:
        """If :meth:`reduce` is a fixed weighted sum over heads, its ``(heads,)`` fp32 weights
        (capture then folds a decode step's layers into one running sum with a single
        matrix product per layer); None otherwise (the default: :meth:`reduce` is called)."""
        return None


class AttMean(Signal):
    """Attention averaged over all layers and heads (paper default)."""

    name = "attmean"


class RawAtt(Signal):
    """Last-layer attention averaged over heads."""

    name = "rawatt"

    def layers(self, num_layers: int) -> list[int]:
        return [num_layers - 1]


class AttGrads(Signal):
    """Attention x gradient of the token's log-probability (positive part), mean over heads."""

    name = "attgrads"
    needs_gradients = True

    def reduce(self, probs: torch.Tensor, layer_idx: int) -> torch.Tensor:
        return probs.clamp_min(0.0).mean(dim=0)


_REGISTRY: dict[str, type[Signal] | Signal] = {
    AttMean.name: AttMean,
    RawAtt.name: RawAtt,
    AttGrads.name: AttGrads,
}


def register_signal(signal: type[Signal] | Signal) -> None:
    """Make a custom signal available by its ``name`` (e.g. in ``TracerConfig(signal=...)``)."""
    is_signal = isinstance(signal, Signal) or (isinstance(signal, type) and issubclass(signal, Signal))
    if not is_signal:
        raise InvalidInputError(
            f"register_signal({signal!r}): expected a Signal subclass or instance "
            f"(omnitrace_core.signals.Signal), got {type(signal).__name__}"
        )
    name = signal.name.lower() if isinstance(signal.name, str) else ""
    if not name.strip() or name == "custom":
        raise InvalidInputError(
            f"register_signal({signal!r}): a registered signal needs its own `name` class attribute"
        )
    _REGISTRY[name] = signal


def available_signals() -> list[str]:
    """Names accepted by :func:`get_signal`."""
    return sorted(_REGISTRY)


def get_signal(name: str | Signal) -> Signal:
    """Return a signal instance by name (or pass an instance through)."""
    if isinstance(name, Signal):
        return name
    entry = _REGISTRY.get(str(name).lower())
    if entry is None:
        raise UnknownNameError(f"unknown signal {name!r}; known signals: {', '.join(available_signals())}")
    return entry() if isinstance(entry, type) else entry


class LearnedHeads(Signal):
    """A learned non-negative weight per (layer, head): a weighted sum instead of a mean.

    The weights come from a :class:`~omnitrace_core.calibration.Calibration` (fitted so that a
    source's weighted attention mass predicts what removing it does to the response). Layers
    whose heads all weigh zero are not read at all, so the cost per token is at most AttMean's.

    Args:
        weights: ``(layers, heads)`` non-negative weights (normalised to sum to 1 here).
    """

    name = "learned"

    def __init__(self, weights: torch.Tensor | list[list[float]]) -> None:
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.ndim != 2 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("learned head weights must be a finite, non-negative (layers, heads) matrix")
        self.weights = w / w.sum()
        self._layers = [i for i in range(w.shape[0]) if self.weights[i].sum() > 0]
        # Capture averages the reduced rows over the layers read: scale so the total is the sum.
        self._scaled = self.weights * len(self._layers)

    def layers(self, num_layers: int) -> list[int]:
        if num_layers != self.weights.shape[0]:
            raise ValueError(
                f"learned head weights are for {self.weights.shape[0]} layers, the model has {num_layers}"
            )
        return list(self._layers)

    def head_weights(self, layer_idx: int) -> torch.Tensor:
        return self._scaled[layer_idx]

    def reduce(self, probs: torch.Tensor, layer_idx: int) -> torch.Tensor:
        w = self._scaled[layer_idx].to(probs.device)
        if w.shape[0] != probs.shape[0]:
            raise ValueError(
                f"learned head weights have {w.shape[0]} heads, layer {layer_idx} has {probs.shape[0]}"
            )
        return torch.einsum("h,hrk->rk", w, probs)
