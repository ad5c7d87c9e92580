"""Memory-light losses: cross-entropy of the LM head without materialising the ``[tokens, vocab]`` logits."""

from hf_effi.losses.backends import available_backends, fused_linear_cross_entropy
from hf_effi.losses.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from hf_effi.losses.patch import is_patched, patch_linear_cross_entropy, unpatch_linear_cross_entropy

__all__ = [
    "available_backends",
    "fused_linear_cross_entropy",
    "is_patched",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "patch_linear_cross_entropy",
    "unpatch_linear_cross_entropy",
]
