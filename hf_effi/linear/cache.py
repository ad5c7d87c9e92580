"""Decode cache for linearized layers: per layer, the kernel's recurrent state instead of a growing KV cache.

``generate()`` (and a plain forward with ``use_cache=True``) builds an ordinary ``DynamicCache``. The first time a
linearized layer sees it, ``state_cache_layer`` swaps that layer's empty slot for a ``LinearStateLayer``; layers
kept as softmax keep their ``DynamicLayer``. A ``LinearStateLayer`` holds whatever the layer's op returned as
final state (``LinearAttentionState``, ``HybridAttentionState``, or Liger's ``(gated state, WindowState)``):
fixed-size tensors, so the memory per sequence does not grow with its length. It counts the positions it has
seen so that ``get_seq_length`` / mask sizes / position ids stay what ``generate`` expects.

Beam search (``reorder_cache``) and batch expansion work on the state's batch dimension. Cropping (assisted
decoding) cannot undo a recurrent update, so the layer reports ``is_croppable = False``. Static caches
(``cache_implementation="static"``) are refused: their position bookkeeping assumes preallocated KV slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, StaticLayer

__all__ = ["LinearStateLayer", "map_state", "state_cache_layer", "state_nbytes"]


def map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor of a (nested) state made of NamedTuples / tuples / None."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, tuple):
        mapped = [map_state(s, fn) for s in state]
        return type(state)(*mapped) if hasattr(state, "_fields") else tuple(mapped)
    raise TypeError(f"unexpected state element of type {type(state).__name__}")


def state_nbytes(state: Any) -> int:
    """Bytes held by the tensors of a (nested) state."""
    total = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    map_state(state, count)
    return total


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a copy when it shares a larger storage (see ``LinearStateLayer.store``)."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone(memory_format=torch.contiguous_format)
    return t


class LinearStateLayer(CacheLayerMixin):
    """One linearized layer's slot in a transformers ``Cache``: its recurrent state and a position count."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.state: Any = None
        self.seen_tokens = 0
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError("a linearized layer keeps a recurrent state, not keys and values; "
                                  "its attention module updates it through store()")

    def store(self, state: Any, new_tokens: int) -> None:
        """Keep ``state`` (the op's final state) after ``new_tokens`` more positions (padding included).

        A kernel's final state may be a view into a larger buffer (the window as a slice of the whole prompt's keys,
        the normaliser as a column of a stacked tensor); keeping the view would keep the buffer, and the cache would
        grow with the prompt. Such views are copied into tensors of their own size.
        """
        self.state = map_state(state, _compact)
        self.seen_tokens += int(new_tokens)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def nbytes(self) -> int:
        return state_nbytes(self.state)

    def offload(self) -> None:
        return None

    def prefetch(self) -> None:
        return None

    def reset(self) -> None:
        self.state = None
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a recurrent state cannot be cropped back (assisted decoding is not supported "
                                  "with linearized layers)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = map_state(self.state, lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.state = map_state(self.state, lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.state = map_state(self.state, lambda t: t[indices])


def state_cache_layer(cache: Any, layer_idx: int) -> LinearStateLayer:
    """The ``LinearStateLayer`` of ``layer_idx`` in ``cache``, swapped in for an empty default slot if needed."""
    if not isinstance(cache, Cache):
        raise TypeError(f"past_key_values must be a transformers Cache (e.g. DynamicCache), got "
                        f"{type(cache).__name__}; tuples of tensors are not supported by linearized layers")
    layers = cache.layers
    while len(layers) <= layer_idx:
        replicate = getattr(cache, "layer_class_to_replicate", None)
        layers.append(replicate() if replicate is not None else DynamicLayer())
    layer = layers[layer_idx]
    if isinstance(layer, LinearStateLayer):
        return layer
    if isinstance(layer, StaticLayer):
        raise ValueError("a static cache (cache_implementation='static') cannot hold a linearized layer's state; "
                         "use the default dynamic cache: the recurrent state is already fixed-size")
    if not isinstance(layer, CacheLayerMixin) or layer.get_seq_length() > 0:
        raise ValueError(f"cache layer {layer_idx} is a {type(layer).__name__} that already holds tokens; "
                         "linearized layers need a fresh cache (pass past_key_values=None or a new DynamicCache)")
    layers[layer_idx] = LinearStateLayer()
    return layers[layer_idx]
