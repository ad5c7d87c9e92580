"""``linearize(model, method=...)``: swap a pretrained model's softmax attention for linear attention, in place.

Everything is checked before the model is touched (method, feature map, window, layers, each layer's attention
pattern); the new modules are then built, and only when all of them exist are they swapped in, so a failure
leaves the model exactly as it was. The converted model's class becomes ``Linearized<Class>`` (a subclass made
by ``hf_effi.linear.modeling``) whose ``save_pretrained`` writes an ``hf_effi_linear`` config, and
``model.config.hf_effi_linearization`` records the settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hf_effi.linear.attention import (
    LinearizedAttention,
    LinearizedEncoderAttention,
    PaddingMaskRecorder,
    find_rotary,
)
from hf_effi.linear.feature_maps import FEATURE_MAPS
from hf_effi.linear.methods import METHODS, LinearizeSettings

__all__ = ["apply_linearization", "attention_sites", "is_linearized", "linearize", "resolve_settings"]

_LINEARIZED = (LinearizedAttention, LinearizedEncoderAttention)


@dataclass
class _Site:
    """One attention module to replace: ``setattr(parent, name, new)``."""

    layer_idx: int
    parent: nn.Module
    name: str
    module: nn.Module


def is_linearized(model: nn.Module) -> bool:
    """True when any attention of ``model`` (a plain or peft-wrapped model) has been linearized."""
    return any(isinstance(m, _LINEARIZED) for m in model.modules())


def _backbone(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def attention_sites(model: nn.Module) -> tuple[str, nn.Module, list[_Site]]:
    """``(pattern, backbone, sites)``: ``"decoder"`` for ``backbone.layers[i].self_attn``, ``"encoder"`` for
    BERT-style ``backbone.encoder.layer[i].attention.self``. Raises for other layouts, naming what is missing."""
    backbone = _backbone(model)
    layers = getattr(backbone, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        for name in ("self_attn", "attention"):  # GPT-NeoX calls it `attention`; its check then names what lacks
            if all(isinstance(getattr(layer, name, None), nn.Module) for layer in layers):
                return "decoder", backbone, [_Site(i, layer, name, getattr(layer, name))
                                             for i, layer in enumerate(layers)]
    encoder_layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if isinstance(encoder_layers, nn.ModuleList) and all(hasattr(getattr(layer, "attention", None), "self")
                                                         for layer in encoder_layers):
        return "encoder", backbone, [_Site(i, layer.attention, "self", layer.attention.self)
                                     for i, layer in enumerate(encoder_layers)]
    raise ValueError(
        f"linearize: unsupported architecture {type(model).__name__}: found neither decoder layers "
        "(<backbone>.layers[i].self_attn, as Llama/Mistral/Qwen2/Gemma) nor BERT-style encoder layers "
        "(<backbone>.encoder.layer[i].attention.self)"
    )


def _decoder_problem(attn: nn.Module) -> str | None:
    """Why ``attn`` does not follow the q/k/v/o + rotary pattern, or None."""
    if hasattr(attn, "_hf_hook"):
        return ("carries an accelerate dispatch hook (device_map / offloading), which the new module would lose; "
                "linearize before dispatching, or save and reload with from_pretrained(..., device_map=...)")
    names = ("qkv_proj", "o_proj") if hasattr(attn, "qkv_proj") else ("q_proj", "k_proj", "v_proj", "o_proj")
    missing = [n for n in names if not isinstance(getattr(attn, n, None), nn.Module)]
    if missing:
        fused = [n for n in ("query_key_value", "c_attn", "Wqkv") if hasattr(attn, n)]
        hint = f" (it has a fused {fused[0]}, which is not supported)" if fused else ""
        return f"has no {', '.join(missing)}{hint}"
    for name in ("head_dim", "scaling", "num_key_value_groups", "config"):
        if not hasattr(attn, name):
            return f"has no {name} attribute"
    if find_rotary(attn) is None:
        return "uses no apply_rotary_pos_emb (rotary position embeddings are required)"
    if getattr(attn, "attn_logit_softcapping", None) is not None:
        return "uses attention logit soft-capping, which linear attention cannot reproduce"
    if getattr(attn, "sinks", None) is not None:
        return "uses attention sinks, which linear attention cannot reproduce"
    if not getattr(attn, "is_causal", True):
        return "is bidirectional (is_causal=False); linearize decoders with causal attention"
    if (getattr(attn, "q_norm", None) is None) != (getattr(attn, "k_norm", None) is None):
        return "has only one of q_norm / k_norm"
    return None


def _encoder_problem(attn: nn.Module) -> str | None:
    missing = [n for n in ("query", "key", "value") if not isinstance(getattr(attn, n, None), nn.Module)]
    if missing:
        return f"has no {', '.join(missing)}"
    for name in ("num_attention_heads", "attention_head_size", "scaling", "config"):
        if not hasattr(attn, name):
            return f"has no {name} attribute"
    if getattr(attn, "is_decoder", False) or getattr(attn, "is_causal", False):
        return "is a causal/decoder BERT attention; only bidirectional encoders are supported"
    return None


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


def resolve_settings(method: str, *, window: int | None, feature_map: str | None, feature_dim: int | None,
                     layers, num_layers: int, causal: bool, sinks: int = 0) -> LinearizeSettings:
    """Fill a method's defaults and check every argument (raises ValueError naming it and the fix)."""
    defaults = METHODS.get(method).factory()
    method = method.strip().lower()
    map_entry = FEATURE_MAPS.get(feature_map if feature_map is not None else defaults.feature_map)
    if defaults.kind == "gated" and map_entry.meta["learnable"]:
        raise ValueError(f"feature_map={map_entry.name!r}: method 'liger' adds no parameters; use a map without "
                         "weights (softmax, elu, relu) or method='lolcats'")
    if defaults.kind == "linear":
        if window is not None:
            raise ValueError(f"window={window!r}: method {method!r} is pure linear attention without a window; "
                             "use method='lolcats' (or feature_map=... with method='lolcats') for a window hybrid")
    else:
        window = defaults.window if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} must be an int >= 1 (tokens of softmax attention kept), e.g. 64")
    if feature_dim is not None:
        if not map_entry.meta["learnable"]:
            raise ValueError(f"feature_dim={feature_dim!r} only applies to maps with weights (hedgehog, taylor), "
                             f"not {map_entry.name!r}; drop feature_dim")
        _check_int("feature_dim", feature_dim, 1)
    elif map_entry.meta["learnable"]:
        feature_dim = defaults.feature_dim if defaults.feature_map == map_entry.name else \
            map_entry.meta["default_feature_dim"]
    _check_int("sinks", sinks, 0)
    if sinks and defaults.kind != "hybrid":
        raise ValueError(f"sinks={sinks}: attention sinks belong to the window hybrids (lolcats, based); method "
                         f"{method!r} has no shared softmax normaliser to keep them in; drop sinks")
    if not causal and defaults.kind != "linear":
        raise ValueError(f"method={method!r} needs causal attention (a sliding window or a gate); this model is a "
                         "bidirectional encoder: use method='hedgehog' (or 'elu', 'relu')")
    if layers is None:
        chosen = list(range(num_layers))
    else:
        if isinstance(layers, (int, str)) or not hasattr(layers, "__iter__"):
            raise ValueError(f"layers={layers!r} must be a list of layer indices, e.g. layers=[0, 2]")
        chosen = list(layers)
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
                raise ValueError(f"layers={layers!r}: {i!r} is not a layer index in [0, {num_layers - 1}] "
                                 f"(the model has {num_layers} layers)")
        if not chosen:
            raise ValueError("layers=[] converts nothing; pass None for all layers or a non-empty list")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"layers={layers!r} lists a layer twice")
        chosen = sorted(chosen)
    return LinearizeSettings(method=method, kind=defaults.kind, feature_map=map_entry.name, feature_dim=feature_dim,
                             window=window, window_weight_init=defaults.window_weight_init, layers=chosen,
                             causal=causal, sinks=sinks)


def apply_linearization(model: nn.Module, settings: LinearizeSettings) -> nn.Module:
    """Replace the attention of ``settings.layers`` in place (all or nothing) and mark the model linearized."""
    from hf_effi.linear.modeling import linearized_class

    pattern, backbone, sites = attention_sites(model)
    problem_of = _decoder_problem if pattern == "decoder" else _encoder_problem
    for layer_idx in settings.layers:
        problem = problem_of(sites[layer_idx].module)
        if problem is not None:
            module = sites[layer_idx].module
            raise ValueError(f"linearize: {type(model).__name__} layer {layer_idx} attention "
                             f"({type(module).__name__}) {problem}")
    recorder = PaddingMaskRecorder()
    module_cls = LinearizedAttention if pattern == "decoder" else LinearizedEncoderAttention
    new_modules = {i: module_cls(sites[i].module, settings, i, recorder) for i in settings.layers}
    new_class = linearized_class(type(model))
    done = []
    try:
        for i, new in new_modules.items():
            setattr(sites[i].parent, sites[i].name, new)
            done.append(i)
        backbone.register_forward_pre_hook(recorder, with_kwargs=True)
        model.config.hf_effi_linearization = settings.to_dict()
        model.__class__ = new_class
    except BaseException:
        for i in done:
            setattr(sites[i].parent, sites[i].name, sites[i].module)
        raise
    return model


def linearize(model: nn.Module, method: str = "lolcats", *, window: int | None = None, feature_map: str | None = None,
              feature_dim: int | None = None, layers=None, sinks: int = 0, inplace: bool = True) -> nn.Module:
    """Convert a pretrained model's softmax attention to linear attention; returns the converted model.

    Args:
        model: a transformers model whose decoder attention has q_proj/k_proj/v_proj/o_proj + rotary embeddings
            (Llama, Mistral, Qwen2/Qwen3, Gemma, SmolLM2, ...; Phi-3's fused qkv_proj too) or a BERT-style encoder (query/key/value).
        method: ``lolcats`` (default), ``hedgehog``, ``based``, ``liger``, ``elu`` or ``relu`` (see
            ``hf_effi.linear.methods``); encoders take the pure linear methods only.
        window: sliding-window tokens for hybrid/gated methods (default 64); must be None for pure linear ones.
        feature_map: override the method's feature map (``hedgehog``, ``taylor``, ``elu``, ``relu``, ``softmax``).
        feature_dim: the learnable map's projection size (Hedgehog 64 -> 128 features; Taylor 16 -> 153).
        layers: indices of the layers to convert (default all); the others keep softmax attention.
        sinks: hybrids only: keep the first ``sinks`` real tokens of each sequence under exact softmax after they
            leave the window (attention sinks, StreamingLLM) instead of folding them into the linear sums; the
            decode state grows by ``sinks`` keys/values per layer, still constant in length. 0 (default) is the
            paper's hybrid. Runs on the reference/chunk backends (the Triton hybrid kernels have no sink block).
        inplace: True (default) converts ``model`` itself and returns it; False converts a deep copy and leaves
            ``model`` untouched (twice the memory while copying).

    The original q/k/v/o weights and rotary embedding are reused; the new parameters (feature maps, window
    weights; ``linear_parameters(model)``) live in the same dtype/device as the q projection. Raises ValueError
    for unknown names, bad values, unsupported architectures or an already linearized model; on any error the
    model is left as it was.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if type(model).__name__ == "PeftModel" or hasattr(model, "peft_config"):
        raise ValueError("linearize the base model before wrapping it with peft (get_peft_model), not the PeftModel")
    if is_linearized(model):
        raise ValueError(f"this {type(model).__name__} is already linearized "
                         f"({getattr(model.config, 'hf_effi_linearization', {}).get('method', '?')}); "
                         "linearize the original model, or load a fresh copy")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    pattern, _, sites = attention_sites(model)
    settings = resolve_settings(method, window=window, feature_map=feature_map, feature_dim=feature_dim,
                                layers=layers, num_layers=len(sites), causal=pattern == "decoder", sinks=sinks)
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        return apply_linearization(model, settings)
