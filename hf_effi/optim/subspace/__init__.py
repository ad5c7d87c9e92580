"""Memory-efficient subspace optimizers on one projector core: GaLore, Fira, APOLLO, APOLLO-Mini, FRUGAL, GWT, Grass.

Importing this package registers ``galore_adamw``, ``galore_adamw_8bit`` (a clear error without bitsandbytes +
CUDA), ``fira_adamw``, ``apollo_adamw``, ``apollo_mini``, ``frugal``, ``gwt_adamw`` and ``grass_adamw`` in
``hf_effi.make``; each projects the ``target`` group's matrices and runs AdamW on every other parameter.
"""

from hf_effi.optim.subspace.apollo import ApolloAdamW
from hf_effi.optim.subspace.base import SubspaceAdamW
from hf_effi.optim.subspace.fira import FiraAdamW
from hf_effi.optim.subspace.frugal import FrugalAdamW
from hf_effi.optim.subspace.galore import GaLoreAdamW
from hf_effi.optim.subspace.grass import GrassAdamW
from hf_effi.optim.subspace.gwt import GWTAdamW
from hf_effi.optim.subspace.projectors import (
    exact_svd_basis,
    gaussian_projection,
    oriented,
    random_rows,
    randomized_range_finder,
    refresh_offset,
    stable_seed,
    top_norm_rows,
)
from hf_effi.optim.subspace.wavelet import haar_forward, haar_inverse

__all__ = [
    "SUBSPACE_OPTIMIZERS",
    "ApolloAdamW",
    "FiraAdamW",
    "FrugalAdamW",
    "GWTAdamW",
    "GaLoreAdamW",
    "GrassAdamW",
    "SubspaceAdamW",
    "exact_svd_basis",
    "gaussian_projection",
    "haar_forward",
    "haar_inverse",
    "oriented",
    "random_rows",
    "randomized_range_finder",
    "refresh_offset",
    "stable_seed",
    "top_norm_rows",
]

# The registered names that build a working optimizer on this machine (galore_adamw_8bit needs bitsandbytes + CUDA).
SUBSPACE_OPTIMIZERS = (
    "galore_adamw",
    "fira_adamw",
    "apollo_adamw",
    "apollo_mini",
    "frugal",
    "gwt_adamw",
    "grass_adamw",
)
