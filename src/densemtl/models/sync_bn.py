"""Batch normalisation over the global batch of a multi-process run (``--sync-bn``).

On CUDA this is torch's :class:`torch.nn.SyncBatchNorm`. Torch's version runs only on GPUs, so on
the CPU (gloo) :class:`GlobalBatchNorm2d` computes the same thing with differentiable
all-reduces of the per-channel sums: mean and variance over every rank's samples, the running
statistics updated with them (unbiased variance), and gradients that flow through the global
statistics. In evaluation mode, or alone, it is :class:`torch.nn.BatchNorm2d`.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import Tensor, nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` whose training statistics are those of the global batch."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, 2, 3]
        c = x.shape[1]
        # sums in float64, one all-reduce: E[x²] − E[x]² without float32's cancellation
        x64 = x.double()
        count = torch.tensor([float(x.numel() // c)], dtype=torch.float64, device=x.device)
        stats = _AllReduce.apply(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        n = stats[-1]
        mean64 = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean64 * mean64).clamp_min(0).to(x.dtype)
        mean = mean64.to(x.dtype)
        centred = x - mean.view(1, c, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1)).clamp_min(0)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = (1, c, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _AllReduce(torch.autograd.Function):
    """Σ_r x^r on every rank; its gradient with respect to x^r is Σ_r of the output gradients."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNormAct2d(GlobalBatchNorm2d):
    """:class:`GlobalBatchNorm2d` followed by the dropout and activation that timm's
    ``BatchNormAct2d`` (EfficientNet, MobileNet) carries inside its batch norm."""

    def __init__(self, *args: object, drop: nn.Module, act: nn.Module) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.drop = drop
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d synchronised across the ranks: torch's SyncBatchNorm on
    CUDA (timm's conversion when timm is loaded, which keeps its norm+activation layers whole),
    :class:`GlobalBatchNorm2d` elsewhere; parameters and statistics are kept."""
    if device.type == "cuda":
        if "timm" in sys.modules:
            from timm.layers import convert_sync_batchnorm

            return convert_sync_batchnorm(model)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if isinstance(getattr(module, "act", None), nn.Module) and isinstance(getattr(module, "drop", None), nn.Module):
            new: GlobalBatchNorm2d = GlobalBatchNormAct2d(*args, drop=module.drop, act=module.act)
        else:
            new = GlobalBatchNorm2d(*args)
        new = new.to(next(iter(module.buffers()), torch.empty(0)).device)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


__all__ = ["GlobalBatchNorm2d", "GlobalBatchNormAct2d", "convert_sync_bn"]
