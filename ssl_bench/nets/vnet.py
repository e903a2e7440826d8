"""The field's 3D V-Net: the network behind every Left Atrium row since UA-MT.

Architecture as read in UA-MT's ``code/networks/vnet.py`` (yulequan/UA-MT, MICCAI 2019; the same
file is copied by DTC, MC-Net, SS-Net, BCP and AD-MT), used there with one input channel, two
classes, ``normalization='batchnorm'`` and ``has_dropout=True``; written here from that
description (Milletari et al., "V-Net", 3DV 2016, adapted):

* encoder stages of 1, 2, 3, 3, 3 convolutions (3x3x3, padding 1, BN, ReLU) with 16, 32, 64,
  128, 256 filters; between stages a 2x2x2 convolution of stride 2 (BN, ReLU) doubles the filters;
* decoder: a 2x2x2 transposed convolution of stride 2 (BN, ReLU) halves the filters and is *added*
  to the encoder feature of the same scale (additive skips, no concatenation), then 3, 3, 2, 1
  convolutions; a 1x1x1 convolution gives the logits;
* one ``Dropout3d(p=0.5)`` module applied to the bottleneck feature and to the last decoder feature
  (in train mode only, as ``has_dropout=True`` does), which also makes UA-MT's MC-dropout teacher
  stochastic.

9,448,866 parameters for 1 input channel and 2 classes (``tests/test_vnet.py``). Inputs must have
every spatial side divisible by 16 (the field's patch 112 x 112 x 80 is).

The backbone interface of ``ssl_bench.nets``: ``forward``, ``encode`` (five features, shallow to
deep), ``decode`` (logits and decoder features, deep to shallow), ``new_decoder``,
``encoder_channels``, ``decoder_channels``; and ``encoder_parameters`` (the down path, which
methods that pre-train the encoder alone, ACTION's stage i, optimise).
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import EncodeDecode

FILTERS = (16, 32, 64, 128, 256)
ENCODER_CONVS = (1, 2, 3, 3, 3)
DECODER_CONVS = (3, 3, 2, 1)  # after each up-sampling, deep to shallow


def _conv_stage(n: int, cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


UP_MODES = ("transposed", "linear", "nearest")


def _up(cin: int, cout: int, mode: str = "transposed") -> nn.Sequential:
    """x2 up-sampling, BN, ReLU: the field's transposed convolution, or (MC-Net's other decoders,
    ``networks/VNet.py`` of ycwu1997/MC-Net) trilinear (align_corners) / nearest interpolation then a
    3x3x3 convolution."""
    if mode == "transposed":
        first: list[nn.Module] = [nn.ConvTranspose3d(cin, cout, 2, stride=2)]
    elif mode in UP_MODES:
        first = [nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True) if mode == "linear"
                 else nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(cin, cout, 3, padding=1)]
    else:
        raise ValueError(f"unknown up-sampling {mode!r}; choose from {', '.join(UP_MODES)}")
    return nn.Sequential(*first, nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class VNetDecoder(nn.Module):
    """Up-sampling path, additive skips, last-block dropout and the 1x1x1 head."""

    def __init__(self, filters, num_classes: int, dropout: nn.Module, up: str = "transposed"):
        super().__init__()
        f = list(filters)
        deep_to_shallow = f[::-1]  # 256, 128, 64, 32, 16
        self.ups = nn.ModuleList(_up(deep_to_shallow[i], deep_to_shallow[i + 1], up) for i in range(len(f) - 1))
        self.stages = nn.ModuleList(_conv_stage(n, c, c) for n, c in zip(DECODER_CONVS, deep_to_shallow[1:]))
        self.head = nn.Conv3d(f[0], num_classes, 1)
        self.dropout = dropout

    def forward(self, feats: list[torch.Tensor]):
        x = feats[-1]
        dec = []
        for i, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = stage(up(x) + feats[-2 - i])
            dec.append(x)
        x = self.dropout(x)
        return self.head(x), dec


class VNet(EncodeDecode, nn.Module):
    """The field's V-Net (module docstring). ``dropout=False`` removes both dropout applications."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, filters=FILTERS, dropout: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder_channels = list(filters)
        self.decoder_channels = list(filters[:-1])[::-1]
        self.spatial_dims = 3
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = in_channels
        for i, (n, c) in enumerate(zip(ENCODER_CONVS, filters)):
            self.stages.append(_conv_stage(n, prev, c))
            if i < len(filters) - 1:
                self.downs.append(_down(c, filters[i + 1]))
            prev = filters[i + 1] if i < len(filters) - 1 else c
        # one module, applied twice (bottleneck and last decoder block), as in the field's file
        self.dropout = nn.Dropout3d(p=0.5) if dropout else nn.Identity()
        self.decoder = VNetDecoder(filters, num_classes, self.dropout)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 5 or any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"V-Net needs (B, C, D, H, W) input with every side divisible by 16; got {tuple(x.shape)}")
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == len(self.stages) - 1:
                x = self.dropout(x)
            feats.append(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return feats

    def decode(self, feats):
        return self.decoder(feats)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The down path's parameters (its stages and strided convolutions; dropout has none)."""
        return [*self.stages.parameters(), *self.downs.parameters()]

    def new_decoder(self, up: str = "transposed") -> nn.Module:
        """A freshly initialised decoder (its own last-block dropout); ``up`` = transposed, linear or nearest."""
        return VNetDecoder(self.encoder_channels, self.num_classes,
                           nn.Dropout3d(p=0.5) if isinstance(self.dropout, nn.Dropout3d) else nn.Identity(), up)
