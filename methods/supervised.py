"""UNet-L and UNet-F: the supervised lower and upper bounds of the paper's tables.

Both train the backbone with 0.5 (CE + Dice) on labeled slices only; they differ in the data
the loop gives them. UNet-L sees the labeled subset of the run; UNet-F sees every training case
with its label (the loop honours ``fully_supervised``), the upper bound of Tables 1 and 2
(Ronneberger et al., "U-Net", MICCAI 2015).
"""
from __future__ import annotations

from ssl_bench.registry import register_method

from .base import Method, StepOutput


class _Supervised(Method):
    paper = "Ronneberger et al., U-Net, MICCAI 2015"
    supervised_only = True

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()

    def modules(self):
        return {"student": self.student}

    def training_step(self, batch, step):
        loss = self.supervised_loss(self.student(batch.x_lb), batch.y_lb)
        return StepOutput(loss=loss, terms={"sup": loss.detach()})


@register_method("unet-l", description="U-Net trained on the labeled subset only (lower bound)")
class UNetL(_Supervised):
    pass


@register_method("unet-f", description="U-Net trained on every training case with labels (upper bound)")
class UNetF(_Supervised):
    fully_supervised = True
