"""MC-Net / MC-Net+: mutual consistency between decoders that up-sample differently (Wu, Xu, Ge,
Cai & Zhang, "Semi-supervised Left Atrium Segmentation with Mutual Consistency Training", MICCAI
2021; Wu, Ge, Zhang, Xu & Cai, "Mutual consistency learning for semi-supervised medical image
segmentation", MedIA 81, 2022).

One encoder, several decoders that differ only in their up-sampling: the backbone's own
(transposed convolutions), one interpolating linearly (trilinear in 3D, bilinear in 2D) and, for
MC-Net+ (``variant="v2"``, the default), one with nearest-neighbour interpolation; MC-Net
(``variant="v1"``) has the first two. Each decoder's probabilities p_d are pulled towards the
sharpened probabilities of every other decoder,

    L_c = sum_{i != j} mean((p_i - s(p_j))^2),   s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T)),  T = 0.1,

over the whole batch (labeled and unlabeled), with gradients through both sides, and each decoder
is supervised on the labeled part by the soft Dice of the foreground classes:

    L = lamda sum_d Dice_fg(p_d, y) + w(t) L_c,   lamda = 0.5,  w(t) = 1.0 x sigmoid ramp over 40 % of the budget.

Facts read in the authors' LA code (ycwu1997/MC-Net, ``code/train_mcnet_3d.py``: the Dice-only
supervised term although a cross-entropy is computed and logged, ``consistency=1``,
``consistency_rampup=40`` on ``iter // 150`` of 15000 iterations, ``temperature=0.1``,
``lamda=0.5``; ``code/networks/VNet.py``: ``Upsampling_function`` modes 0/1/2; ``code/utils/
test_patch.py``: the first decoder is tested). The Dice of the binary code is
1 - (2 sum p_1 y + eps) / (sum p_1 + sum y + eps); for C classes the mean of that over the
foreground classes. The network is ``MultiDecoder`` over ``ctx.make_backbone()``: the V-Net (3D)
or the U-Net (2D), whose ``new_decoder(up=...)`` builds the other decoders. At test time the
first decoder (the backbone's own) predicts, unless ``test_decoder`` names another.

The ACDC release (``code/train_mcnet_2d.py`` at fee453c, run by ``train_mcnet_2d.sh`` with
``--model mcnet2d_v2`` at 7 and 14 labeled patients) differs in four values, each a key here and all set
by the ``field`` protocol: ``lamda`` 1 (``--lamda`` default 1), ``consistency`` 0.1 with SSL4MIS's ramp
sigmoid_rampup(iter // 150, 200) over 30k iterations (``rampup`` 1.0), the supervised term SSL4MIS's
``DiceLoss`` averaged over all four classes, background included (``dice_classes="all"``, squared form
under ``dice_form=squared``), and the decoder tested: its first decoder up-samples bilinearly
(``networks/unet.py`` ``MCNet2d_v2``: ``up_type`` 1, 0, 2), and ``test_2d.py`` loads the encoder and that
decoder into a plain U-Net (``test_decoder="linear"``). 12 + 12 slices at 256 px, SGD at a constant lr
0.01 (no decay: ``poly_power=0``), the best
model on the validation list (every 200 iterations) tested, seed 1337.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.losses import one_hot, soft_dice
from ssl_bench.registry import register_method

from .base import Method, StepOutput
from .variant import check_variant

VARIANTS = ("v2", "v1")
DECODERS = {"v1": ("transposed", "linear"), "v2": ("transposed", "linear", "nearest")}


@dataclass
class MCNetConfig:
    variant: str = "v2"  # v2: MC-Net+ (3 decoders); v1: MC-Net (2 decoders)
    consistency: float = 1.0
    rampup: float = 0.4  # fraction of the budget (40 x 150 of 15000 iterations)
    temperature: float = 0.1
    lamda: float = 0.5  # weight of the supervised Dice terms
    dice_classes: str = "foreground"  # foreground (LA code) or all (ACDC code: SSL4MIS DiceLoss)
    test_decoder: str = "transposed"  # the up-sampling of the decoder that predicts (ACDC release: linear)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """MC-Net's element-wise sharpening p^(1/T) / (p^(1/T) + (1 - p)^(1/T))."""
    a, b = p ** (1 / temperature), (1 - p) ** (1 / temperature)
    return a / (a + b)


def foreground_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-8,
                         form: str = "linear", background: bool = False) -> torch.Tensor:
    """Mean over foreground classes (every class with ``background``) of 1 - soft Dice, sums over the
    batch and every spatial dim (MC-Net's ``Binary_dice_loss`` for two classes: the ``linear`` form,
    Σp + Σy; the run's ``dice_form`` picks ``squared``, Σp² + Σy², as SSL4MIS's DiceLoss in MC-Net+'s
    ACDC code, which also counts the background)."""
    dice = soft_dice(probs, one_hot(target, probs.shape[1]), form, eps)
    return (1 - (dice if background else dice[1:])).mean()


class MultiDecoder(nn.Module):
    """The backbone (encoder + its own decoder) plus decoders that up-sample in other ways."""

    def __init__(self, backbone: nn.Module, ups: tuple[str, ...], predict: str = "transposed"):
        super().__init__()
        if predict not in ups:
            raise ValueError(f"mcnet: test_decoder={predict!r} is not one of this variant's decoders "
                             f"({', '.join(ups)})")
        self.predict = ups.index(predict)
        try:
            extra = [backbone.new_decoder(up=up) for up in ups[1:]]
        except TypeError:
            raise ValueError("mcnet needs a backbone whose new_decoder takes up=... (unet, vnet)") from None
        self.backbone = backbone
        self.extra = nn.ModuleList(extra)

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone.encode(x)
        return [self.backbone.decode(feats)[0], *[d(feats)[0] for d in self.extra]]

    def forward(self, x):
        if self.predict == 0:
            return self.backbone(x)  # the backbone's own decoder, as the authors' LA code tests
        return self.extra[self.predict - 1](self.backbone.encode(x))[0]


@register_method("mcnet", description="MC-Net+: mutual consistency of decoders with different up-sampling",
                 paper="Wu et al., MICCAI 2021 / MedIA 2022")
class MCNet(Method):
    Config = MCNetConfig
    paper = "Wu et al., MICCAI 2021 / MedIA 2022"
    #: every built-in recipe runs the default variant v2, MC-Net+ (the name of its published rows);
    #: a table holding v1 runs beside it reads "MC-Net+ (v1)": v1 is MC-Net (MICCAI 2021)
    display_name = "MC-Net+"

    def __init__(self, cfg: MCNetConfig, ctx):
        check_variant("mcnet", cfg.variant, VARIANTS)
        if not cfg.temperature > 0:
            raise ValueError(f"mcnet: temperature must be positive (got {cfg.temperature})")
        if cfg.dice_classes not in ("foreground", "all"):
            raise ValueError(f"mcnet: dice_classes={cfg.dice_classes!r}; choose foreground or all")
        super().__init__(cfg, ctx)
        self.student = MultiDecoder(ctx.make_backbone(), DECODERS[cfg.variant], cfg.test_decoder)

    def modules(self):
        return {"student": self.student}

    def training_step(self, batch, step):
        cfg = self.cfg
        n = batch.x_lb.shape[0]
        outs = self.student.forward_all(torch.cat([batch.x_lb, batch.x_ulb]))
        probs = [o.float().softmax(1) for o in outs]
        sup = cfg.lamda * sum(foreground_dice_loss(p[:n], batch.y_lb, form=self.ctx.dice_form,
                                                   background=cfg.dice_classes == "all") for p in probs)
        targets = [sharpen(p, cfg.temperature) for p in probs]
        cons = sum(F.mse_loss(probs[i], targets[j]) for i in range(len(probs)) for j in range(len(probs)) if i != j)
        w = cfg.consistency * self.ramp(step, cfg.rampup)
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "consistency": cons.detach(), "w_cons": w})
