"""MTAN's task attention masks, as used by VMSANet.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
(https://arxiv.org/abs/1803.10704): at every encoder and decoder level each task learns a soft
mask in (0, 1) from the shared features (and its own attended features of the previous level)
and multiplies the shared stage output with it.
"""

from __future__ import annotations

from torch import nn


def attention_mask(in_channels: int, out_channels: int, hidden: int | None = None) -> nn.Sequential:
    """MTAN's mask ``h∘g``: 1×1 conv-BN-ReLU to ``hidden`` (default ``out_channels``), 1×1 conv-BN, sigmoid.

    Its values lie in (0, 1).
    """
    hidden = out_channels if hidden is None else hidden
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )
