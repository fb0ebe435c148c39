"""MTAN's task attention masks, as used by VMSANet.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
(https://arxiv.org/abs/1803.10704): at every encoder and decoder level each task learns a soft
mask in (0, 1) from the shared features (and its own attended features of the previous level)
and multiplies the shared stage output with it.
"""

from __future__ import annotations

from torch import nn


def attention_mask(in_channels: int, out_channels: int) -> nn.Sequential:
    """MTAN's attention module: 1×1 conv-BN-ReLU, 1×1 conv-BN-sigmoid (hidden width = ``out_channels``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )
