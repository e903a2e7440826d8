"""The 2D U-Net used by the semi-supervised segmentation tables (ACDC / LiTS).

Encoder channels 16-32-64-128-256 with dropout 0.05/0.1/0.2/0.3/0.5 on the encoder levels,
two 3x3 conv + BatchNorm + LeakyReLU per level, max-pool down, transposed-conv up
(Ronneberger et al., MICCAI 2015, in the configuration the SSL4MIS benchmark popularised).

Methods that need more than logits use the backbone interface instead of forking the net:
``encode(x)`` -> list of encoder features (shallow to deep), ``decode(feats)`` -> (logits,
decoder features shallow-last), ``new_decoder()`` -> an independently initialised decoder that
accepts the same encoder features (CCT's auxiliary decoders), plus the channel lists.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.01),
        )

    def forward(self, x):
        return self.body(x)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, channels, dropouts):
        super().__init__()
        self.levels = nn.ModuleList()
        prev = in_channels
        for i, (c, p) in enumerate(zip(channels, dropouts)):
            block = ConvBlock(prev, c, p)
            self.levels.append(block if i == 0 else nn.Sequential(nn.MaxPool2d(2), block))
            prev = c

    def forward(self, x) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


UP_MODES = ("transposed", "linear", "nearest")


def _up2d(cin: int, cout: int, mode: str) -> nn.Module:
    """x2 up-sampling: a transposed convolution, or bilinear / nearest interpolation then a 1x1
    convolution (MC-Net's decoder variants)."""
    if mode == "transposed":
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
    if mode not in UP_MODES:
        raise ValueError(f"unknown up-sampling {mode!r}; choose from {', '.join(UP_MODES)}")
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear" if mode == "linear" else "nearest"),
                         nn.Conv2d(cin, cout, kernel_size=1))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, up: str = "transposed"):
        super().__init__()
        self.up = _up2d(cin, cskip, up)
        self.conv = ConvBlock(cskip * 2, cout, 0.0)

    def forward(self, x, skip):
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd input sizes
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([skip, x], dim=1))


class Decoder(nn.Module):
    def __init__(self, channels, num_classes: int, up: str = "transposed"):
        super().__init__()
        ch = list(channels)
        self.ups = nn.ModuleList(
            UpBlock(ch[i], ch[i - 1], ch[i - 1], up) for i in range(len(ch) - 1, 0, -1)
        )
        self.head = nn.Conv2d(ch[0], num_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]):
        x = feats[-1]
        dec = []
        for i, up in enumerate(self.ups):
            x = up(x, feats[-2 - i])
            dec.append(x)
        return self.head(x), dec


class EncodeDecode:
    """``forward_features`` and ``forward`` of a backbone from its ``encode`` and ``decode``."""

    def forward_features(self, x):
        feats = self.encode(x)
        logits, dec = self.decode(feats)
        return logits, feats, dec

    def forward(self, x):
        return self.decode(self.encode(x))[0]


class UNet(EncodeDecode, nn.Module):
    """2D U-Net (about 1.8 M parameters for 1 input channel and 4 classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4,
                 channels=(16, 32, 64, 128, 256), dropouts=(0.05, 0.1, 0.2, 0.3, 0.5)):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder_channels = list(channels)
        # decoder features come out deep-to-shallow: 128, 64, 32, 16
        self.decoder_channels = list(channels[:-1])[::-1]
        self.encoder = Encoder(in_channels, channels, dropouts)
        self.decoder = Decoder(channels, num_classes)

    def compile_units(self) -> list[nn.Module]:
        """What ``step.prepare_modules`` compiles: every entry point (``forward``, ``encode``,
        ``decode``, ``forward_features``) runs through the encoder and the decoder."""
        return [self.encoder, self.decoder]

    def encode(self, x):
        return self.encoder(x)

    def decode(self, feats):
        return self.decoder(feats)

    def new_decoder(self, up: str = "transposed") -> nn.Module:
        """A freshly initialised decoder; ``up`` = transposed (as the main one), linear or nearest."""
        dec = Decoder(self.encoder_channels, self.num_classes, up)
        return dec


def clone_reinitialised(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every parameter re-initialised."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        if hasattr(m, "reset_parameters") and m is not twin:
            m.reset_parameters()
    return twin
