"""``AttentionTransferTrainer``: stage 1 of LoLCATs-style linearization, as a Trainer.

Each linearized layer is trained to reproduce the original softmax attention's output (per head, before o_proj)
from the same queries, keys and values. Only the parameters ``hf_effi.linearize`` added (feature maps, window
weights) train; every pretrained weight is frozen. The teacher is the same model: in transfer mode each layer
computes the softmax attention on the fly under ``no_grad`` and passes *it* on to the next layer (teacher forcing),
so there is no second model copy and every layer learns independently, all in one forward.

    lin = hf_effi.linearize(model, method="lolcats")
    args = AttentionTransferArguments(output_dir="stage1", learning_rate=1e-2, max_steps=200)
    AttentionTransferTrainer(model=lin, args=args, train_dataset=ds).train()
    # stage 2: LoRA on q/k/v/o with peft and an ordinary Trainer / EffiTrainer (next-token loss)

The loss is ``transfer_mse_factor * mean over layers of MSE`` (LoLCATs scales the MSE by 1000; with that factor
the default learning rates of ordinary fine-tuning are in range). Every ``logging_steps`` the per-layer MSE, averaged
over the steps since the last log, is logged as ``transfer_mse/layer_<i>``. ``evaluate()`` reports the same loss on
the eval set. Labels in the batch are ignored (the objective needs none). Gradient accumulation, checkpoints,
resume, hf_effi optimizers and schedules work as in :class:`EffiTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hf_effi.trainers.arguments import EffiTrainingArguments
from hf_effi.trainers.effi_trainer import EffiTrainer

__all__ = ["AttentionTransferArguments", "AttentionTransferTrainer", "freeze_for_attention_transfer"]


@dataclass
class AttentionTransferArguments(EffiTrainingArguments):
    """EffiTrainingArguments plus the attention-transfer loss scale."""

    transfer_mse_factor: float = field(
        default=1000.0, metadata={"help": "Multiplier of the mean per-layer MSE (LoLCATs uses 1000)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.transfer_mse_factor > 0:
            raise ValueError(f"transfer_mse_factor must be > 0, got {self.transfer_mse_factor!r}")


def freeze_for_attention_transfer(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except those ``linearize`` added; return the trainable ones."""
    from hf_effi.linear import linear_parameters

    trainable = linear_parameters(model)
    if not trainable:
        raise ValueError(
            "this linearized model added no parameters (e.g. method='liger' reuses the key projection as its gate): "
            "there is nothing for attention transfer to train; go straight to LoRA fine-tuning"
        )
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return trainable


class AttentionTransferTrainer(EffiTrainer):
    """Trains the linear attention of a linearized model to match its own softmax attention (see module docstring)."""

    def __init__(self, model: nn.Module | None = None, args: EffiTrainingArguments | None = None, *a, **kw):
        from hf_effi.linear import linear_layers

        if model is None or not linear_layers(model):
            raise ValueError("AttentionTransferTrainer needs a linearized model: call hf_effi.linearize(model) first")
        freeze_for_attention_transfer(model)
        super().__init__(model, args, *a, **kw)
        # The loss is a per-batch mean: let Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._mse_sums: dict[int, float] = {}
        self._mse_count = 0

    @property
    def mse_factor(self) -> float:
        return getattr(self.args, "transfer_mse_factor", 1000.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from hf_effi.linear import set_attention_transfer, transfer_losses

        inputs = {k: v for k, v in inputs.items() if k not in ("labels", "token_weights")}
        target = self.accelerator.unwrap_model(model)
        set_attention_transfer(target, True)
        try:
            outputs = model(**inputs, use_cache=False)
            per_layer = transfer_losses(target)
        finally:
            set_attention_transfer(target, False)
        stacked = torch.stack([per_layer[i] for i in sorted(per_layer)])
        if model.training:
            for i, v in zip(sorted(per_layer), stacked.detach().float().tolist(), strict=True):
                self._mse_sums[i] = self._mse_sums.get(i, 0.0) + v
            self._mse_count += 1
        loss = self.mse_factor * stacked.mean()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._mse_count and "loss" in logs:
            for i, total in sorted(self._mse_sums.items()):
                logs[f"transfer_mse/layer_{i}"] = total / self._mse_count
            self._mse_sums, self._mse_count = {}, 0
        super().log(logs, *args, **kwargs)
