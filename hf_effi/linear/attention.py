"""Linearized attention modules that replace a pretrained softmax attention in place.

``LinearizedAttention`` (causal decoders with the q/k/v/o (or fused qkv/o, Phi-3) + rotary pattern) and ``LinearizedEncoderAttention``
(BERT-style ``query``/``key``/``value``) keep the original projection submodules under the same attribute names,
so state-dict keys and peft ``target_modules`` still match, and reuse the model's rotary embeddings (the decoder
layer passes ``position_embeddings``). KV heads are repeated before the feature maps, so the maps are per query
head (as LoLCATs). All attention maths goes through the ``hf_effi.kernels.linear_attn`` ops.

Padding: the backbone carries a ``PaddingMaskRecorder`` forward pre-hook that keeps the 2-D ``attention_mask`` of
the current call; the modules read its last T columns, so a padded position never enters a state.

Transfer mode (``transfer_enabled``): the module also computes the original softmax attention (no grad) on the
same q/k/v, stores ``transfer_mse`` (MSE of the per-head outputs before o_proj over real tokens) and passes the
softmax output on, so each layer is trained against its own teacher from one forward (LoLCATs Eq. 6).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from hf_effi.kernels import linear_attn as ops
from hf_effi.linear.cache import state_cache_layer
from hf_effi.linear.feature_maps import make_feature_map
from hf_effi.linear.methods import LinearizeSettings

__all__ = ["LinearizedAttention", "LinearizedEncoderAttention", "PaddingMaskRecorder", "find_rotary"]

# Liger's gate_logit_normalizer: decay = sigmoid(k)^(1/16), from GLA (arXiv:2312.06635, Sec. 4.4).
LIGER_GATE_NORMALIZER = 16.0


class PaddingMaskRecorder:
    """Forward pre-hook for the backbone (the module that owns the layers): remembers the call's ``attention_mask``
    (``[B, S]``, 1 = real token) so linearized layers can keep padding out of their states."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        self.mask = mask if isinstance(mask, torch.Tensor) else None

    def current(self, batch: int, length: int) -> torch.Tensor | None:
        """``[batch, length]`` bool mask of the current chunk, or None when every position is real."""
        mask = self.mask
        if mask is None:
            return None
        if mask.dim() == 4:  # an explicit 4-D mask: its last query row allows exactly the real keys
            row = mask[:, 0, -1, :]
            mask = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
        if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] < length:
            raise ValueError(f"attention_mask of shape {tuple(self.mask.shape)} does not cover a batch of {batch} x "
                             f"{length} tokens; pass a [batch, past + new tokens] mask of 1 (real) and 0 (padding)")
        mask = mask[:, -length:].to(torch.bool)
        return None if bool(mask.all()) else mask


def find_rotary(attn: nn.Module) -> Callable | None:
    """The ``apply_rotary_pos_emb(q, k, cos, sin)`` the attention's own modeling file uses, or None."""
    fn = getattr(attn, "rotary_fn", None)
    if callable(fn):
        return fn
    return getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, Hkv, T, D] -> [B, Hkv * groups, T, D]`` (each KV head serves ``groups`` query heads)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over real tokens of ``[B, H, T, D]`` outputs, in float32."""
    diff = (student.float() - teacher.float()).pow(2)
    if mask is None:
        return diff.mean()
    weight = mask[:, None, :, None].to(diff.dtype)
    return (diff * weight).sum() / (weight.sum() * diff.shape[1] * diff.shape[3]).clamp_min(1.0)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                      mask: torch.Tensor | None, window: int | None = None) -> torch.Tensor:
    """Plain softmax attention on ``[B, H, T, D]`` (the transfer teacher). Padded query rows come out 0."""
    t = q.shape[2]
    allowed = torch.ones(t, t, dtype=torch.bool, device=q.device)
    if causal:
        allowed = torch.tril(allowed)
        if window is not None:
            allowed = allowed & ~torch.tril(allowed, diagonal=-window)
    allowed = allowed[None, None]
    if mask is not None:
        # keys must be real; a padded query keeps its own position so its row is not empty (it is zeroed below)
        allowed = allowed & (mask[:, None, None, :] | torch.eye(t, dtype=torch.bool, device=q.device))
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    if mask is not None:
        out = out * mask[:, None, :, None].to(out.dtype)
    return out


class _LinearCore(nn.Module):
    """What every linearized module shares: feature maps, window weights, transfer bookkeeping."""

    def _init_core(self, settings: LinearizeSettings, layer_idx: int, num_heads: int, head_dim: int,
                   recorder: PaddingMaskRecorder, dtype: torch.dtype, device: torch.device) -> None:
        self.settings = settings
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.padding_recorder = recorder
        self.transfer_enabled = False
        self.transfer_mse: torch.Tensor | None = None
        with torch.device(device):
            fmap_q = make_feature_map(settings.feature_map, num_heads, head_dim, settings.feature_dim)
            fmap_k = make_feature_map(settings.feature_map, num_heads, head_dim, settings.feature_dim)
            window_factors = torch.full((num_heads,), settings.window_logit_init, dtype=dtype)
        # only the new modules take the projections' dtype: the reused ones (norms kept in fp32, ...) stay as they are
        self.feature_map_q, self.feature_map_k = fmap_q.to(dtype), fmap_k.to(dtype)
        if settings.kind == "hybrid":
            self.window_factors = nn.Parameter(window_factors)
        else:
            self.register_parameter("window_factors", None)

    def linear_parameters(self) -> list[nn.Parameter]:
        """The parameters the conversion added (feature maps, window weights): what stage 1 trains."""
        params = list(self.feature_map_q.parameters()) + list(self.feature_map_k.parameters())
        return params + ([self.window_factors] if self.window_factors is not None else [])


class LinearizedAttention(_LinearCore):
    """Causal linear (or hybrid, or gated) attention in place of a decoder's softmax attention.

    Shapes: ``hidden_states [B, T, hidden]`` in and out; inside, q/k/v are ``[B, H, T, head_dim]``.
    Decoding keeps, per layer, the kernel state in the cache (see ``hf_effi.linear.cache``): constant memory.
    """

    def __init__(self, base: nn.Module, settings: LinearizeSettings, layer_idx: int, recorder: PaddingMaskRecorder):
        super().__init__()
        config = base.config
        self.config = config
        self.o_proj = base.o_proj
        if hasattr(base, "qkv_proj"):  # Phi-3 fuses the three projections: keep it fused, under its own name
            self.qkv_proj = base.qkv_proj
            self.q_size = config.num_attention_heads * int(base.head_dim)
            self.kv_size = (config.num_attention_heads // int(base.num_key_value_groups)) * int(base.head_dim)
        else:
            self.q_proj, self.k_proj, self.v_proj = base.q_proj, base.k_proj, base.v_proj
        self.q_norm = getattr(base, "q_norm", None)
        self.k_norm = getattr(base, "k_norm", None)
        self.rotary_fn = find_rotary(base)
        self.scaling = float(base.scaling)
        self.is_causal = True
        self.num_key_value_groups = int(base.num_key_value_groups)
        # the teacher reproduces the original layer, including a sliding window it may have had
        self.teacher_window = getattr(base, "sliding_window", getattr(config, "sliding_window", None))
        weight = (base.qkv_proj if hasattr(base, "qkv_proj") else base.q_proj).weight
        self._init_core(settings, layer_idx, config.num_attention_heads, int(base.head_dim), recorder,
                        weight.dtype, weight.device)

    def _project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, T, heads, head_dim]`` from the separate or the fused projection."""
        shape = (*hidden_states.shape[:2], -1, self.head_dim)
        if hasattr(self, "qkv_proj"):
            q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            return q.view(shape), k.view(shape), v.view(shape)
        return (self.q_proj(hidden_states).view(shape), self.k_proj(hidden_states).view(shape),
                self.v_proj(hidden_states).view(shape))

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values=None, **kwargs) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        q, k, v = self._project(hidden_states)
        v = v.transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q_pre, k_pre = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self.rotary_fn(q_pre, k_pre, cos, sin)
        groups = self.num_key_value_groups
        k, v = _repeat_heads(k, groups), _repeat_heads(v, groups)
        mask = self.padding_recorder.current(batch, length)

        cache_layer = state_cache_layer(past_key_values, self.layer_idx) if past_key_values is not None else None
        state = cache_layer.state if cache_layer is not None else None
        if self.transfer_enabled and state is not None:
            raise ValueError("attention transfer runs on whole sequences: call the model without past_key_values "
                             "(use_cache=False) while set_attention_transfer(model, True) is on")
        if self.transfer_enabled:  # the transfer loss must move only the new parameters, never q/k/v
            q, k, v, q_pre, k_pre = q.detach(), k.detach(), v.detach(), q_pre.detach(), k_pre.detach()
        out, new_state = self._attend(q, k, v, q_pre, _repeat_heads(k_pre, groups), mask, state)
        if cache_layer is not None:
            cache_layer.store(new_state, length)
        if self.transfer_enabled:
            with torch.no_grad():
                teacher = softmax_attention(q, k, v, scale=self.scaling, causal=True, mask=mask,
                                            window=self.teacher_window)
            self.transfer_mse = _masked_mse(out, teacher, mask)
            out = teacher
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(out), None

    def _attend(self, q, k, v, q_pre, k_pre, mask, state):
        kind, window = self.settings.kind, self.settings.window
        step = q.shape[2] == 1 and mask is None and state is not None
        if kind == "hybrid":
            fq, fk = self.feature_map_q(q), self.feature_map_k(k)
            gamma = torch.sigmoid(self.window_factors.float())
            if step:
                return ops.hybrid_window_attention_step(q, k, v, fq, fk, gamma, state, window=window,
                                                        scale=self.scaling, eps=1e-6, sinks=self.settings.sinks)
            return ops.hybrid_window_attention(q, k, v, fq, fk, gamma, window=window, scale=self.scaling,
                                               initial_state=state, attention_mask=mask, sinks=self.settings.sinks)
        if kind == "linear":
            fq, fk = self.feature_map_q(q), self.feature_map_k(k)
            if step:
                return ops.causal_linear_attention_step(fq, fk, v, state, normalize=True, eps=1e-6)
            return ops.causal_linear_attention(fq, fk, v, initial_state=state, attention_mask=mask)
        # gated (Liger): decay from the key projection itself, softmax maps on pre-RoPE q/k, + sliding window
        fq, fk = self.feature_map_q(q_pre), self.feature_map_k(k_pre)
        log_decay = nn.functional.logsigmoid(k_pre.float()) / LIGER_GATE_NORMALIZER
        gla_state, window_state = state if state is not None else (None, None)
        if step:
            gla, gla_state = ops.gated_linear_attention_step(fq, fk, v, log_decay, gla_state, scale=1.0,
                                                             normalize=False, eps=1e-6)
            swa, window_state = ops.sliding_window_attention_step(q, k, v, window_state, window=window,
                                                                  scale=self.scaling)
        else:
            gla, gla_state = ops.gated_linear_attention(fq, fk, v, log_decay, scale=1.0, initial_state=gla_state,
                                                        attention_mask=mask)
            swa, window_state = ops.sliding_window_attention(q, k, v, window=window, scale=self.scaling,
                                                             initial_state=window_state, attention_mask=mask)
        return 0.5 * gla + 0.5 * swa, (gla_state, window_state)


class LinearizedEncoderAttention(_LinearCore):
    """Non-causal linear attention in place of a BERT-style ``self`` attention (``query``/``key``/``value``).

    Returns ``([B, T, H * D], None)`` like ``BertSelfAttention``; the output projection stays in the parent
    ``BertAttention.output``. No rotary embedding, no window (the kernel contract has no non-causal window op).
    """

    def __init__(self, base: nn.Module, settings: LinearizeSettings, layer_idx: int, recorder: PaddingMaskRecorder):
        super().__init__()
        self.config = base.config
        self.query, self.key, self.value = base.query, base.key, base.value
        self.scaling = float(base.scaling)
        self.is_causal = False
        weight = base.query.weight
        self._init_core(settings, layer_idx, int(base.num_attention_heads), int(base.attention_head_size), recorder,
                        weight.dtype, weight.device)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
                ) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        q = self.query(hidden_states).view(shape).transpose(1, 2)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        mask = self.padding_recorder.current(batch, length)
        if self.transfer_enabled:  # the transfer loss must move only the new parameters, never q/k/v
            q, k, v = q.detach(), k.detach(), v.detach()
        out, _ = ops.noncausal_linear_attention(self.feature_map_q(q), self.feature_map_k(k), v, attention_mask=mask)
        if self.transfer_enabled:
            with torch.no_grad():
                teacher = softmax_attention(q, k, v, scale=self.scaling, causal=False, mask=mask)
            self.transfer_mse = _masked_mse(out, teacher, mask)
            out = teacher
        return out.transpose(1, 2).reshape(batch, length, -1), None
