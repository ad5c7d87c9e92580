"""Linearization methods by name, and the resolved settings a conversion records (and a checkpoint stores).

A method fixes the attention ``kind`` and defaults for the feature map and window:

* ``lolcats`` (arXiv:2410.10254): Hedgehog maps after RoPE + sliding-window softmax sharing one normaliser with
  the linear term (Eq. 7), learnable per-head mixing weight gamma = sigmoid(w), initialised to 0.1; window 64.
* ``hedgehog`` (arXiv:2402.04347): pure causal linear attention with Hedgehog maps.
* ``based`` (arXiv:2402.18668): the Taylor map (feature_dim 16) + a 64-token window. Based stacks separate window
  layers; here the window shares the LoLCATs hybrid op and normaliser (our choice, so that every hybrid has one
  code path and window >= T is exact softmax).
* ``liger`` (arXiv:2503.01496): gated linear attention whose per-channel decay is logsigmoid(k_proj(x)) / 16 (no
  new parameters), parameter-free softmax maps on the pre-RoPE q and k, averaged 0.5/0.5 with a 64-token
  sliding-window softmax (as Liger's code: separate normalisers, not LoLCATs' shared one).
* ``elu``, ``relu``: pure linear attention with those maps (ablation baselines).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from hf_effi.registry import Registry

__all__ = ["KINDS", "METHODS", "LinearMethod", "LinearizeSettings"]

METHODS = Registry("linearization method", family="linear_methods")
KINDS = ("hybrid", "linear", "gated")


@dataclass(frozen=True)
class LinearMethod:
    """Defaults of one method: attention kind, feature map, feature dim, window, initial window weight."""

    kind: str
    feature_map: str
    feature_dim: int | None
    window: int | None
    window_weight_init: float = 0.1


def _method(kind: str, feature_map: str, feature_dim: int | None, window: int | None):
    def factory() -> LinearMethod:
        return LinearMethod(kind=kind, feature_map=feature_map, feature_dim=feature_dim, window=window)
    return factory


METHODS.register("lolcats", _method("hybrid", "hedgehog", 64, 64),
                 "Hedgehog maps + 64-token sliding window sharing one normaliser (LoLCATs)")
METHODS.register("hedgehog", _method("linear", "hedgehog", 64, None), "pure linear attention, Hedgehog maps")
METHODS.register("based", _method("hybrid", "taylor", 16, 64), "2nd-order Taylor map + 64-token window (Based)")
METHODS.register("liger", _method("gated", "softmax", None, 64),
                 "gated linear attention gated by the key projection + sliding window, no new parameters (Liger)")
METHODS.register("elu", _method("linear", "elu", None, None), "pure linear attention, elu+1 map (baseline)")
METHODS.register("relu", _method("linear", "relu", None, None), "pure linear attention, relu map (baseline)")


@dataclass
class LinearizeSettings:
    """What a conversion did, stored in a linearized checkpoint's config so loading can redo it.

    Args:
        method: the registered method name (``METHODS``).
        kind: ``"hybrid"`` (window + linear, shared normaliser), ``"linear"`` (pure) or ``"gated"`` (Liger).
        feature_map: the registered feature-map name (``FEATURE_MAPS``).
        feature_dim: the learnable map's projection size, or None for maps without weights.
        window: sliding-window length in tokens for hybrid/gated kinds, None for pure linear attention.
        window_weight_init: initial gamma of the hybrid (sigmoid of the learnable per-head logit).
        layers: the converted decoder layer indices (the others keep softmax attention).
        causal: False for BERT-style encoders (non-causal linear attention).
        sinks: hybrids only: the first real tokens kept under softmax after they leave the window (0 = none).
    """

    method: str = field(metadata={"help": "registered linearization method name"})
    kind: str = field(metadata={"help": "hybrid, linear or gated"})
    feature_map: str = field(metadata={"help": "registered feature-map name"})
    feature_dim: int | None = field(default=None, metadata={"help": "learnable map projection size"})
    window: int | None = field(default=None, metadata={"help": "sliding window in tokens (hybrid, gated)"})
    window_weight_init: float = field(default=0.1, metadata={"help": "initial sigmoid(window logit)"})
    layers: list[int] = field(default_factory=list, metadata={"help": "converted layer indices"})
    causal: bool = field(default=True, metadata={"help": "False for encoders (non-causal)"})
    sinks: int = field(default=0, metadata={"help": "attention-sink tokens kept under softmax (hybrid only)"})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {KINDS}")
        if self.kind in ("hybrid", "gated") and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"window={self.window!r}: method {self.method!r} needs an int window >= 1, e.g. 64")
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"sinks={self.sinks!r} must be an int >= 0")
        if self.sinks and self.kind != "hybrid":
            raise ValueError(f"sinks={self.sinks}: only the hybrid kind keeps attention sinks, not {self.kind!r}")
        if not 0.0 < self.window_weight_init < 1.0:
            raise ValueError(f"window_weight_init={self.window_weight_init} must lie in (0, 1) (it is a sigmoid)")
        self.layers = [int(i) for i in self.layers]

    @property
    def window_logit_init(self) -> float:
        """logit(window_weight_init): -2.1972 for 0.1, LoLCATs' ``init_window_factor``."""
        return math.log(self.window_weight_init / (1.0 - self.window_weight_init))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearizeSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown linearization settings {unknown}; valid keys: {sorted(names)} "
                             "(was the checkpoint written by a newer hf_effi?)")
        return cls(**data)
