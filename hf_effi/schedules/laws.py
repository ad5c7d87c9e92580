"""Hyper-parameter laws: Step Law (optimal lr and batch size), the gradient noise scale, and the loss-curve law
with learning-rate annealing.

- Step Law: Li et al., "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large Language Model
  Pretraining", arXiv 2503.04715. ``eta_opt = 1.79 N^-0.713 D^0.307`` and ``B_opt = 0.58 D^0.571`` (batch in
  tokens), N non-embedding parameters, D training tokens. The constants assume the paper's recipe: AdamW with
  betas (0.9, 0.95), weight decay 0.1, warmup then cosine decay to a small final lr.
- Gradient noise scale: McCandlish et al., "An Empirical Model of Large-Batch Training", arXiv 1812.06162,
  Appendix A: unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` from squared gradient norms at two batch sizes;
  ``B_simple = tr(Sigma) / |G|^2`` approximates the critical batch size.
- Loss-curve law: Tissue et al., "Scaling Law with Learning Rate Annealing", arXiv 2408.11029:
  ``L(s) = L0 + A * S1^-alpha - C * S2`` with forward area ``S1 = sum_{i<=s} eta_i`` and annealing area
  ``S2 = sum_{i<=s} m_i``, ``m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)``.

Choices where the paper leaves room (each is tested):

- Indexing: record ``s`` (1-based optimizer step) holds the loss of update ``s`` and the lr ``eta_s`` that update
  used; ``S1(s)`` and ``S2(s)`` include step ``s``; ``eta_0 := eta_1`` so ``m_1 = 0``. Points with ``S1 = 0`` (a
  warmup that starts at lr 0) have no prediction (NaN) and are not fitted.
- Warmup: the leading steps where the lr rises contribute to ``S1`` but not to ``S2`` (a rising lr at the start is
  not "negative annealing"); a later rise (re-warming) does enter ``S2`` with a negative sign, as in the paper.
- Units: learning rates are absolute. The fit divides them by ``lr_scale`` (the largest lr seen while fitting) to
  keep the problem well conditioned, and stores ``lr_scale`` with the constants, so ``A`` and ``C`` are per
  normalised-lr step; predictions take absolute lrs again. This is a change of units, not an approximation.
- ``lam`` defaults to 0.999, the paper's value (it is not fitted; pass another to study it).
- Fit: Huber loss (``huber_delta`` in nats) minimised by iteratively reweighted Levenberg-Marquardt over
  ``(L0, log A, alpha, C)``, started from a linear least-squares solve on a grid of ``alpha``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LossCurveParams",
    "LossCurveRun",
    "StepLawSuggestion",
    "annealing_areas",
    "fit_loss_curve",
    "noise_scale_from_norms",
    "predict_loss_curve",
    "read_loss_log",
    "step_law",
    "step_law_batch_size",
    "step_law_lr",
]

# Li et al., arXiv 2503.04715: the fitted Step Law for the learning rate and for the batch size in tokens.
STEP_LAW_LR = (1.79, -0.713, 0.307)
STEP_LAW_BATCH = (0.58, 0.571)


def _positive(name: str, value, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}; {hint}")
    return float(value)


def step_law_lr(n_params: float, tokens: float) -> float:
    """Optimal peak learning rate ``1.79 * N^-0.713 * D^0.307`` (Step Law, arXiv 2503.04715).

    Args:
        n_params: non-embedding parameters N (embeddings and the tied/untied output head excluded).
        tokens: training tokens D.
    """
    n = _positive("n_params", n_params, "pass the non-embedding parameter count, e.g. 1e8")
    d = _positive("tokens", tokens, "pass the number of training tokens, e.g. 2e9")
    c, a, b = STEP_LAW_LR
    return c * n**a * d**b


def step_law_batch_size(tokens: float) -> float:
    """Optimal batch size in tokens ``0.58 * D^0.571`` (Step Law, arXiv 2503.04715); independent of N."""
    d = _positive("tokens", tokens, "pass the number of training tokens, e.g. 2e9")
    c, b = STEP_LAW_BATCH
    return c * d**b


@dataclass(frozen=True)
class StepLawSuggestion:
    """What Step Law suggests for a run: peak lr, batch size in tokens and (given ``seq_len``) in sequences."""

    n_params: float
    tokens: float
    lr: float
    batch_tokens: float
    seq_len: int | None = None
    batch_sequences: int | None = None
    steps: int | None = None


def step_law(n_params: float, tokens: float, *, seq_len: int | None = None) -> StepLawSuggestion:
    """Step Law's lr and batch size; with ``seq_len`` also the batch in whole sequences (rounded, >= 1) and the
    number of optimizer steps ``tokens / (batch_sequences * seq_len)`` (rounded up)."""
    lr = step_law_lr(n_params, tokens)
    batch = step_law_batch_size(tokens)
    if seq_len is None:
        return StepLawSuggestion(float(n_params), float(tokens), lr, batch)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int (tokens per sequence), got {seq_len!r}")
    sequences = max(1, round(batch / seq_len))
    steps = math.ceil(tokens / (sequences * seq_len))
    return StepLawSuggestion(float(n_params), float(tokens), lr, batch, seq_len, sequences, steps)


def noise_scale_from_norms(
    sq_norm_small: float, sq_norm_big: float, batch_small: float, batch_big: float
) -> tuple[float, float]:
    """Unbiased ``(|G|^2, tr(Sigma))`` from squared gradient norms at two batch sizes (McCandlish et al.,
    arXiv 1812.06162, Appendix A). Average (or EMA) each over steps before taking
    ``B_simple = tr(Sigma) / |G|^2``: the ratio of single-step estimates is very noisy."""
    b_s = _positive("batch_small", batch_small, "pass the small batch size (e.g. the micro-batch)")
    b_b = _positive("batch_big", batch_big, "pass the big batch size (e.g. micro-batch * accumulation steps)")
    if b_b <= b_s:
        raise ValueError(f"batch_big={batch_big} must exceed batch_small={batch_small}; swap them or accumulate more")
    g2 = (b_b * sq_norm_big - b_s * sq_norm_small) / (b_b - b_s)  # App. A: unbiased |G|^2
    trace = (sq_norm_small - sq_norm_big) / (1.0 / b_s - 1.0 / b_b)  # App. A: unbiased tr(Sigma)
    return float(g2), float(trace)


# --- loss-curve law with lr annealing (Tissue et al., arXiv 2408.11029) ------------------------------------------


def _as_lrs(lrs, name: str = "lrs") -> np.ndarray:
    arr = np.asarray(lrs, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of learning rates (one per step), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite learning rates >= 0; found {arr[~np.isfinite(arr) | (arr < 0)][:3]}")
    return arr


def annealing_areas(lrs: Sequence[float], lam: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """Forward area ``S1`` and annealing area ``S2`` after each step (arXiv 2408.11029, the law in its abstract).

    Args:
        lrs: ``[n]`` the lr of steps 1..n (any unit; the areas are in that unit).
        lam: momentum decay of the annealing area, in [0, 1).

    Returns:
        ``(S1, S2)``, each ``[n]``; entry ``s-1`` covers steps 1..s. Leading warmup steps (rising lr) add nothing
        to ``S2`` (see the module docstring).
    """
    eta = _as_lrs(lrs)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must be in [0, 1) (the paper uses 0.999), got {lam!r}")
    s1 = np.cumsum(eta)
    drops = np.concatenate([[0.0], eta[:-1] - eta[1:]])  # eta_{i-1} - eta_i, with eta_0 := eta_1
    rising = np.concatenate([[True], np.diff(eta) > 0])
    warmup_end = int(np.argmin(rising)) if not rising.all() else eta.size  # first step that is not a rise
    drops[:warmup_end] = 0.0
    m = np.empty_like(eta)
    acc = 0.0
    for i, d in enumerate(drops):
        acc = lam * acc + d  # m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)
        m[i] = acc
    return s1, np.cumsum(m)


@dataclass(frozen=True)
class LossCurveParams:
    """Fitted constants of ``L = L0 + A * S1^-alpha - C * S2`` (S1, S2 in units of ``lr_scale``)."""

    L0: float
    A: float
    alpha: float
    C: float
    lam: float = 0.999
    lr_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LossCurveRun:
    """One run's log: ``steps`` (1-based, increasing), the lr of every step 1..max(steps), and the losses at
    ``steps``. Build it with :meth:`from_records` from sparse ``(step, lr, loss)`` logs."""

    steps: np.ndarray
    lrs: np.ndarray
    losses: np.ndarray

    @classmethod
    def from_records(cls, records: Iterable[Mapping], loss_key: str = "loss") -> LossCurveRun:
        """From dicts with ``step``, ``loss_key`` and ``lr`` (or ``learning_rate``). Records without ``loss_key``
        are skipped; the lr of steps between logged ones is interpolated linearly (exact for logging_steps=1), and
        steps before the first record take its lr (log from step 1 when the run warms up from 0)."""
        rows = []
        for i, rec in enumerate(records):
            if loss_key not in rec:
                continue
            lr = rec.get("lr", rec.get("learning_rate"))
            if lr is None or "step" not in rec:
                raise ValueError(f"record {i} {dict(rec)!r} needs 'step', 'lr' (or 'learning_rate') and {loss_key!r}")
            rows.append((int(rec["step"]), float(lr), float(rec[loss_key])))
        if len(rows) < 2:
            raise ValueError(f"a run needs at least 2 records with step, lr and {loss_key!r}; got {len(rows)}")
        rows.sort()
        steps = np.array([r[0] for r in rows])
        if steps[0] < 1 or np.any(np.diff(steps) <= 0):
            raise ValueError(f"steps must be >= 1 and distinct (1-based optimizer steps), got {steps[:5].tolist()}...")
        lr_at = np.array([r[1] for r in rows])
        lrs = np.interp(np.arange(1, steps[-1] + 1), steps, lr_at)
        return cls(steps=steps, lrs=_as_lrs(lrs), losses=np.array([r[2] for r in rows]))


def read_loss_log(path: str | Path, loss_key: str = "loss") -> LossCurveRun:
    """A run from a JSON-lines log (one ``{"step", "lr", "loss"}`` object per line) or a Trainer
    ``trainer_state.json`` (its ``log_history``); ``loss_key`` picks the value to fit (e.g. ``eval_loss``).
    transformers' Trainer (5.x) logs, at step ``s``, the lr that update ``s`` used, as this law expects."""

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"log {str(path)!r} does not exist; pass a .jsonl of step/lr/loss or a trainer_state.json")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)["log_history"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected a trainer_state.json with 'log_history' ({e})") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {lineno} is not JSON; expected one object per line") from None
    return LossCurveRun.from_records(records, loss_key)


def predict_loss_curve(params: LossCurveParams, lrs: Sequence[float]) -> np.ndarray:
    """``[n]`` predicted loss after each of steps 1..n for the absolute lr sequence ``lrs`` (the law of
    arXiv 2408.11029); NaN where ``S1 = 0``."""
    if not isinstance(params, LossCurveParams):
        raise TypeError(f"params must be a LossCurveParams (from fit_loss_curve), got {type(params).__name__}")
    s1, s2 = annealing_areas(_as_lrs(lrs) / params.lr_scale, params.lam)
    out = np.full(s1.shape, np.nan)
    ok = s1 > 0
    out[ok] = params.L0 + params.A * s1[ok] ** -params.alpha - params.C * s2[ok]
    return out


def _design(runs: Sequence[LossCurveRun], lam: float, lr_scale: float, min_step: int):
    s1s, s2s, ys = [], [], []
    for run in runs:
        s1, s2 = annealing_areas(run.lrs / lr_scale, lam)
        keep = run.steps >= min_step
        idx = run.steps[keep] - 1
        ok = s1[idx] > 0
        s1s.append(s1[idx][ok])
        s2s.append(s2[idx][ok])
        ys.append(run.losses[keep][ok])
    return np.concatenate(s1s), np.concatenate(s2s), np.concatenate(ys)


def _huber_weights(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))


def _huber(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))))


def _model(theta: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and Jacobian ``[n, 4]`` over ``(L0, log A, alpha, C)``."""
    l0, log_a, alpha, c = theta
    power = np.exp(log_a - alpha * np.log(s1))  # A * S1^-alpha
    pred = l0 + power - c * s2
    jac = np.stack([np.ones_like(s1), power, -power * np.log(s1), -s2], axis=1)
    return pred, jac


def _linear_start(alpha: float, s1, s2, y, w) -> np.ndarray | None:
    """With alpha fixed the law is linear in (L0, A, C): weighted least squares gives the other three."""
    x = np.stack([np.ones_like(s1), s1**-alpha, -s2], axis=1)
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(x * sw, y * sw[:, 0], rcond=None)
    if coef[1] <= 0:
        return None
    return np.array([coef[0], math.log(coef[1]), alpha, coef[2]])


def fit_loss_curve(
    runs: LossCurveRun | Sequence[LossCurveRun | Iterable[Mapping]],
    *,
    lam: float = 0.999,
    huber_delta: float = 0.01,
    min_step: int = 1,
    max_iter: int = 200,
) -> LossCurveParams:
    """Fit ``(L0, A, alpha, C)`` of the annealing loss law (arXiv 2408.11029, the law in its abstract) to one or more runs.

    Args:
        runs: a :class:`LossCurveRun`, or a list of them / of record lists (``{"step", "lr", "loss"}`` dicts).
            Fitting two runs with different schedules (e.g. constant and cosine) separates ``A``/``alpha`` from ``C``.
        lam: annealing-momentum decay (paper: 0.999).
        huber_delta: Huber threshold in loss units; residuals beyond it count linearly (robust to noisy batches).
        min_step: ignore records before this step (the first steps of training follow no power law).
        max_iter: Levenberg-Marquardt iterations.
    """
    if isinstance(runs, LossCurveRun):
        runs = [runs]
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError(f"runs must be a LossCurveRun or a non-empty list of them, got {type(runs).__name__}")
    runs = [r if isinstance(r, LossCurveRun) else LossCurveRun.from_records(r) for r in runs]
    _positive("huber_delta", huber_delta, "a loss difference in nats, e.g. 0.01")
    if isinstance(min_step, bool) or not isinstance(min_step, int) or min_step < 1:
        raise ValueError(f"min_step must be an int >= 1 (1-based optimizer step), got {min_step!r}")
    lr_scale = max(float(r.lrs.max()) for r in runs)
    if lr_scale <= 0:
        raise ValueError("every logged learning rate is 0: the law needs a run that trained (S1 > 0)")
    s1, s2, y = _design(runs, lam, lr_scale, min_step)
    if y.size < 4:
        raise ValueError(f"only {y.size} usable points after min_step={min_step}; the law has 4 constants")

    def objective(theta):
        return _huber(_model(theta, s1, s2)[0] - y, huber_delta)

    starts = [
        t
        for a in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
        if (t := _linear_start(a, s1, s2, y, np.ones_like(y))) is not None
    ]
    if not starts:
        raise ValueError("the losses do not fall as the forward area grows (no A > 0 fits); log more steps")
    theta = min(starts, key=objective)
    damping = 1e-3
    for _ in range(max_iter):
        pred, jac = _model(theta, s1, s2)
        r = pred - y
        w = _huber_weights(r, huber_delta)  # IRLS: Huber as a reweighted least-squares problem
        jw = jac * w[:, None]
        h = jac.T @ jw
        g = jac.T @ (w * r)
        current = objective(theta)
        improved = False
        for _ in range(20):
            step = np.linalg.solve(h + damping * np.diag(np.diag(h) + 1e-12), -g)
            cand = theta + step
            cand[2] = max(cand[2], 1e-4)  # alpha > 0: the forward term must decay
            if objective(cand) < current:
                theta, damping, improved = cand, max(damping / 3, 1e-9), True
                break
            damping *= 4
        if not improved or np.max(np.abs(step)) < 1e-10:
            break
    l0, log_a, alpha, c = (float(v) for v in theta)
    return LossCurveParams(L0=l0, A=math.exp(log_a), alpha=alpha, C=c, lam=float(lam), lr_scale=lr_scale)
