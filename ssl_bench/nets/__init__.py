"""Backbones. ``create_backbone("unet", ...)`` is the field's 2D U-Net, ``"vnet"`` the field's 3D V-Net; ``smp:<Arch>:<encoder>``
builds any segmentation-models-pytorch model with random initialisation (nothing is downloaded).

Every backbone offers ``forward(x) -> logits``, ``encode(x) -> [features]``,
``decode(features) -> (logits, [decoder features])``, ``new_decoder()``,
``encoder_channels``, ``decoder_channels`` and ``compile_units()`` (the submodules that
``torch.compile`` compiles, through which every entry point runs).
"""
from __future__ import annotations

from torch import nn

from .unet import UNet, clone_reinitialised


class SmpBackbone(nn.Module):
    """Adapter giving a segmentation-models-pytorch model the backbone interface."""

    def __init__(self, arch: str, encoder: str, in_channels: int, num_classes: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        try:
            self.model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None,
                                          in_channels=in_channels, classes=num_classes)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"unknown segmentation-models-pytorch backbone smp:{arch}:{encoder} ({exc}); "
                "see segmentation_models_pytorch's list of architectures and encoders"
            ) from None
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder_channels = list(self.model.encoder.out_channels)
        head_in = self.model.segmentation_head[0].in_channels
        self.decoder_channels = [head_in]

    def compile_units(self) -> list[nn.Module]:
        """What ``step.prepare_modules`` compiles (every entry point runs through these)."""
        return [self.model.encoder, self.model.decoder, self.model.segmentation_head]

    def encode(self, x):
        return list(self.model.encoder(x))

    def _decode_with(self, decoder, head, feats):
        try:
            out = decoder(feats)
        except TypeError:  # older smp decoders take *features
            out = decoder(*feats)
        return head(out), [out]

    def decode(self, feats):
        return self._decode_with(self.model.decoder, self.model.segmentation_head, feats)

    def new_decoder(self) -> nn.Module:
        backbone = self

        class _Twin(nn.Module):
            def __init__(self):
                super().__init__()
                self.decoder = clone_reinitialised(backbone.model.decoder)
                self.head = clone_reinitialised(backbone.model.segmentation_head)

            def forward(self, feats):
                return backbone._decode_with(self.decoder, self.head, feats)

        return _Twin()

    def forward_features(self, x):
        feats = self.encode(x)
        logits, dec = self.decode(feats)
        return logits, feats, dec

    def forward(self, x):
        return self.model(x)


def create_backbone(name: str, in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    if name == "unet":
        return UNet(in_channels, num_classes)
    if name == "vnet":  # the field's 3D V-Net (ssl_bench/nets/vnet.py)
        from .vnet import VNet

        return VNet(in_channels, num_classes)
    if name.startswith("smp:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise ValueError(f"backbone {name!r}: expected smp:<Arch>:<encoder>, e.g. smp:Unet:resnet18")
        return SmpBackbone(parts[1], parts[2], in_channels, num_classes)
    raise ValueError(f"unknown backbone {name!r}; use 'unet', 'vnet' (3D) or 'smp:<Arch>:<encoder>' (e.g. smp:Unet:resnet18)")


__all__ = ["UNet", "SmpBackbone", "create_backbone", "clone_reinitialised"]
