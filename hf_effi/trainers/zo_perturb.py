"""Seeded in-place perturbations and the zeroth-order (SPSA) update rules behind :class:`ZOTrainer`.

MeZO (Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", arXiv 2305.17333, Alg. 1) estimates
the gradient from two forward passes: ``g = (L(θ + εz) - L(θ - εz)) / (2ε)`` and steps ``θ <- θ - η g z``. The noise
``z ~ N(0, I)`` is never stored: each parameter draws it from a private ``torch.Generator`` seeded from
``(sample seed, parameter index)``, in fixed-size chunks, so every pass (+ε, -2ε, +ε, update) regenerates the same
``z`` chunk by chunk. The extra memory of a pass is one chunk of noise (``NOISE_CHUNK`` floats, 4 MiB), whatever the
size of the parameter; the global RNG is never touched.

Restore is *not* bit-exact, by design. ``θ + εz - 2εz + εz`` in floating point differs from ``θ`` by rounding, and an
exact restore needs a copy of the trainable weights (or of the rounding errors), which is the memory MeZO exists
to avoid. The deviation is bounded elementwise by ``1.5 ulp(|θ| + 2ε|z|)`` per perturbation cycle (three roundings
of at most half an ulp of the intermediate values), is zero-mean, and in fp32 is ~1e-3 of a typical MeZO update;
``tests/trainers/test_zo.py`` checks this bound. Keep trainable parameters in fp32 (e.g. fp32 LoRA adapters over a
bf16 base): in bf16 the same bound is ~0.4 % of ``|θ|`` per step and the update itself is rounded away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = [
    "NOISE_CHUNK",
    "SPARSE_SAMPLE",
    "ZO_METHODS",
    "ZOOptimizer",
    "magnitude_mask",
    "mix_seed",
    "noise_chunks",
    "perturb_",
    "spsa_projected_gradient",
    "unpack_mask",
]

NOISE_CHUNK = 1 << 20  # floats of noise alive at once; a multiple of 8 so packed mask bytes align with chunks
SPARSE_SAMPLE = 1 << 16  # elements a Sparse-MeZO threshold is estimated from, per parameter
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over each value in turn): nearby inputs give unrelated
    seeds, so ``(step seed, parameter index)`` never collides with a neighbour's stream."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def _flat(param: torch.Tensor) -> torch.Tensor:
    data = param.data
    if not data.is_contiguous():
        raise ValueError(
            f"a trainable parameter of shape {tuple(data.shape)} is not contiguous; ZO perturbs parameters in place "
            "through a flat view. Make it contiguous before training (param.data = param.data.contiguous())."
        )
    return data.view(-1)


def noise_chunks(param: torch.Tensor, seed: int, chunk: int = NOISE_CHUNK) -> Iterator[tuple[int, torch.Tensor,
                                                                                               torch.Tensor]]:
    """``(start, flat view of param[start:start+len], z)`` chunk by chunk; ``z`` is fp32 N(0, 1) drawn from a
    generator seeded with ``seed``, so the same ``seed`` gives the same ``z`` on every pass."""
    flat = _flat(param)
    gen = torch.Generator(device=flat.device)
    gen.manual_seed(seed)
    for start in range(0, flat.numel(), chunk):
        view = flat[start : start + chunk]
        yield start, view, torch.randn(view.shape, generator=gen, device=flat.device, dtype=torch.float32)


_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS_CACHE:
        _SHIFTS_CACHE[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS_CACHE[device]


def _pack(mask: torch.Tensor) -> torch.Tensor:
    pad = (-mask.numel()) % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(pad)])
    return (mask.view(-1, 8).to(torch.uint8) << _shifts(mask.device)).sum(1, dtype=torch.uint8)


def unpack_mask(bits: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Elements ``[start, start + length)`` of a mask packed by :func:`magnitude_mask` (``start`` a multiple of 8)."""
    part = bits[start // 8 : (start + length + 7) // 8]
    return ((part.unsqueeze(1) >> _shifts(part.device)) & 1).view(-1)[:length].bool()


def magnitude_mask(param: torch.Tensor, fraction: float, chunk: int = NOISE_CHUNK) -> tuple[torch.Tensor, float]:
    """Sparse-MeZO's mask of small weights: ``|θ| <= h``, ``h`` the ``fraction``-quantile of ``|θ|`` of this tensor.

    Returns ``(bits, h)``: the mask packed 8 elements per byte (1 bit per parameter) and the threshold. ``h`` is the
    exact quantile for tensors of at most ``SPARSE_SAMPLE`` elements, otherwise the quantile of an evenly strided
    sample of ``SPARSE_SAMPLE`` elements (no RNG, no full-size copy). The mask must be taken from the unperturbed
    weights and kept until the update: recomputing it from perturbed weights would move elements near ``h`` in or
    out of the mask between passes.
    """
    flat = _flat(param)
    n = flat.numel()
    stride = max(1, math.ceil(n / SPARSE_SAMPLE))
    sample = flat[::stride].abs().float()
    k = min(sample.numel(), max(1, math.ceil(fraction * sample.numel())))
    h = sample.kthvalue(k).values.item()
    bits = torch.cat([_pack(flat[s : s + chunk].abs() <= h) for s in range(0, n, chunk)])
    return bits, h


def perturb_(params: Sequence[torch.Tensor], seeds: Sequence[int], scale: float,
             masks: Sequence[torch.Tensor] | None = None) -> None:
    """``θ_i += scale · z_i`` in place for every parameter (``z_i`` from ``seeds[i]``; only masked elements if
    ``masks`` holds packed bit masks)."""
    for i, (param, seed) in enumerate(zip(params, seeds)):
        for start, view, z in noise_chunks(param, seed):
            if masks is not None:
                z.mul_(unpack_mask(masks[i], start, view.numel()))
            view.add_(z, alpha=scale)


def spsa_projected_gradient(objective: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                            seeds: Sequence[int], eps: float,
                            masks: Sequence[torch.Tensor] | None = None) -> tuple[float, torch.Tensor]:
    """Two-point SPSA along one seeded direction (MeZO Alg. 1, lines 2-9): ``((L+ - L-) / (2ε), (L+ + L-) / 2)``.

    ``objective()`` is evaluated at ``θ + εz`` and ``θ - εz`` (under ``torch.no_grad``), then the parameters are
    put back. Returns the projected gradient as a Python float and the mean of the two losses (an estimate of
    ``L(θ)`` accurate to O(ε²), better than either one), detached.
    """
    offset = 0.0  # where the weights are now, in units of z: restored to 0 even if the objective raises
    with torch.no_grad():
        try:
            perturb_(params, seeds, eps, masks)
            offset = eps
            loss_plus = objective().detach().float()
            perturb_(params, seeds, -2 * eps, masks)
            offset = -eps
            loss_minus = objective().detach().float()
        finally:
            perturb_(params, seeds, -offset, masks)
    g = ((loss_plus - loss_minus) / (2 * eps)).item()
    return g, (loss_plus + loss_minus) / 2


ZO_METHODS = ("mezo_sgd", "zo_adam", "sparse_mezo")


def _noise_streams(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    gens = []
    for seed in seeds:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        gens.append(gen)
    return gens


class ZOOptimizer(torch.optim.Optimizer):
    """The update half of MeZO-SGD, ZO-Adam and Sparse-MeZO: a real ``torch.optim.Optimizer`` that never reads
    ``.grad``.

    Trainer's scheduler sets ``param_groups[i]["lr"]``, checkpoints save :meth:`state_dict`, and :meth:`step`
    applies the projected gradients collected since the last step: with ``n`` samples ``(seed_k, g_k)`` (one per
    micro-batch under gradient accumulation) the estimate is ``ĝ = (1/n) Σ_k g_k z_k`` (n-SPSA, MeZO Alg. 1 with
    ``n`` directions), regenerated chunk by chunk.

    - ``mezo_sgd``: ``θ <- θ (1 - η λ) - η ĝ`` (MeZO's ``θ - η(ĝ + λθ)``; no decay on biases and norms).
    - ``zo_adam``: Adam on ``ĝ`` (ZO-Bench, Zhang et al., arXiv 2402.11592): ``m <- β1 m + (1-β1) ĝ``,
      ``v <- β2 v + (1-β2) ĝ²``, ``θ <- θ (1 - η λ) - η m̂ / (√v̂ + eps)``. Costs 8 bytes per trainable fp32
      parameter (``exp_avg``, ``exp_avg_sq``): ZO-Adam gives up MeZO's inference-level memory.
    - ``sparse_mezo``: MeZO-SGD with ``z`` restricted to a mask of small-magnitude weights (Sparse MeZO, Liu et
      al., arXiv 2402.15751): per tensor, ``|θ| <= h`` with ``h`` the ``sparse_fraction``-quantile of ``|θ|``
      (see :func:`magnitude_mask`). The mask is taken from the unperturbed weights at the first sample of a step,
      kept packed (1 bit per parameter) until the update, then dropped; weight decay still applies to the whole
      tensor.

    The sample seeds are ``mix_seed(seed, k)`` for the k-th sample of the run, so ``(seed, samples_drawn)`` in
    :meth:`state_dict` is the whole RNG state: a resumed run draws the same directions, and every DDP rank with the
    same ``seed`` draws the same ones.
    """

    def __init__(self, params, *, lr: float, method: str = "mezo_sgd", eps: float = 1e-3, seed: int = 0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 sparse_fraction: float = 0.2):
        if method not in ZO_METHODS:
            raise ValueError(f"method={method!r} is not a ZO method; valid ones are {list(ZO_METHODS)}")
        if not eps > 0:
            raise ValueError(f"eps={eps!r} must be > 0 (MeZO uses 1e-3)")
        if not 0 < sparse_fraction <= 1:
            raise ValueError(f"sparse_fraction={sparse_fraction!r} must be in (0, 1]")
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), adam_eps=adam_eps)
        super().__init__(params, defaults)
        for p in self._params():
            _flat(p)  # refuse non-contiguous parameters now, not half-way through a perturbation
        self.zo_method, self.zo_eps, self.sparse_fraction = method, float(eps), float(sparse_fraction)
        self.base_seed, self.samples_drawn = int(seed), 0
        self._pending: list[tuple[int, float]] = []
        self._masks: list[torch.Tensor] | None = None

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def pending(self) -> list[tuple[int, float]]:
        """The ``(sample seed, projected gradient)`` pairs :meth:`step` will apply."""
        return list(self._pending)

    def next_sample_seed(self) -> int:
        seed = mix_seed(self.base_seed, self.samples_drawn)
        self.samples_drawn += 1
        return seed

    def param_seeds(self, sample_seed: int) -> list[int]:
        return [mix_seed(sample_seed, i) for i in range(len(self._params()))]

    def masks(self) -> list[torch.Tensor] | None:
        """Sparse-MeZO's packed masks for the current step (taken now if this is the step's first sample)."""
        if self.zo_method != "sparse_mezo":
            return None
        if self._masks is None:
            self._masks = [magnitude_mask(p, self.sparse_fraction)[0] for p in self._params()]
        return self._masks

    def estimate(self, objective: Callable[[], torch.Tensor]) -> tuple[int, float, torch.Tensor]:
        """One SPSA sample at the current weights: ``(sample seed, projected gradient, mean loss)``; the pair is
        not queued (the trainer may all-reduce ``g`` first, then calls :meth:`add_estimate`)."""
        masks = self.masks()
        sample_seed = self.next_sample_seed()
        g, loss = spsa_projected_gradient(objective, self._params(), self.param_seeds(sample_seed), self.zo_eps,
                                          masks)
        return sample_seed, g, loss

    def add_estimate(self, sample_seed: int, projected_grad: float) -> None:
        if not math.isfinite(projected_grad):
            raise FloatingPointError(
                f"the zeroth-order projected gradient is {projected_grad} (a loss was not finite at θ ± εz); "
                "lower zo_eps or the learning rate, or check the inputs"
            )
        self._pending.append((int(sample_seed), float(projected_grad)))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("ZOOptimizer.step takes no closure: the loss is evaluated by ZOTrainer.training_step")
        if not self._pending:
            raise RuntimeError(
                "ZOOptimizer.step() has no projected gradient to apply; call estimate() and add_estimate() first "
                "(ZOTrainer.training_step does), never loss.backward()"
            )
        n = len(self._pending)
        coefs = [g / n for _, g in self._pending]
        masks = self._masks
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                seeds = [mix_seed(s, index) for s, _ in self._pending]
                mask = masks[index] if masks is not None else None
                if self.zo_method == "zo_adam":
                    self._adam_update(p, seeds, coefs, group)
                else:
                    self._sgd_update(p, seeds, coefs, mask, group)
                index += 1
        self._pending.clear()
        self._masks = None
        return None

    @staticmethod
    def _sgd_update(p, seeds, coefs, mask, group) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            p.mul_(1 - lr * wd)
        for seed, c in zip(seeds, coefs):
            for start, view, z in noise_chunks(p, seed):
                if mask is not None:
                    z.mul_(unpack_mask(mask, start, view.numel()))
                view.add_(z, alpha=-lr * c)

    def _adam_update(self, p, seeds, coefs, group) -> None:
        lr, wd, (b1, b2), adam_eps = group["lr"], group["weight_decay"], group["betas"], group["adam_eps"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["step"] += 1
        t = state["step"].item()
        bias1, bias2 = 1 - b1**t, 1 - b2**t
        flat, m, v = _flat(p), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        if wd:
            p.mul_(1 - lr * wd)
        gens = _noise_streams(seeds, flat.device)
        for start in range(0, flat.numel(), NOISE_CHUNK):
            view = flat[start : start + NOISE_CHUNK]
            g_hat = torch.zeros(view.shape, device=flat.device, dtype=torch.float32)
            for gen, c in zip(gens, coefs):  # the same draws, in the same chunks, as noise_chunks
                g_hat.add_(torch.randn(view.shape, generator=gen, device=flat.device, dtype=torch.float32), alpha=c)
            m_c, v_c = m[start : start + NOISE_CHUNK], v[start : start + NOISE_CHUNK]
            m_c.mul_(b1).add_(g_hat, alpha=1 - b1)
            v_c.mul_(b2).addcmul_(g_hat, g_hat, value=1 - b2)
            denom = (v_c.sqrt() / math.sqrt(bias2)).add_(adam_eps)
            view.addcdiv_(m_c, denom, value=-lr / bias1)

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["zo"] = {"method": self.zo_method, "seed": self.base_seed, "samples_drawn": self.samples_drawn}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("this optimizer state has no 'zo' entry: it was not saved by a ZOOptimizer")
        if zo["method"] != self.zo_method:
            raise ValueError(
                f"the checkpoint was trained with zo_method={zo['method']!r}, this run uses {self.zo_method!r}; "
                "resume with the same zo_method"
            )
        super().load_state_dict(state_dict)
        self.base_seed, self.samples_drawn = int(zo["seed"]), int(zo["samples_drawn"])
        self._pending.clear()
        self._masks = None
