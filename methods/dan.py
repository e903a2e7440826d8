"""DAN: deep adversarial networks (Zhang, Yang, Chen, Fredericksen & Chen, "Deep Adversarial
Networks for Biomedical Image Segmentation Utilizing Unannotated Images", MICCAI 2017).

A segmentation network S and an evaluation network (discriminator) D. D sees an image together
with S's softmax segmentation of it and tells whether the image was annotated: segmentations of
labeled slices are "real" (1), of unlabeled slices "fake" (0). S minimises its supervised loss
plus an adversarial term that makes D call its unlabeled segmentations annotated-like.

Two optimisers, as in the paper's alternating scheme: the loop steps S on ``loss`` (the
discriminator's parameters are ``aux_parameters()`` and never in S's optimiser), then zeroes and
steps D on ``aux_losses["discriminator"]``, computed on *detached* segmentations so it never
reaches S. D's optimiser is Adam (lr 1e-4, betas 0.9/0.99), S's the loop's SGD.

D is a small fully convolutional classifier: four 4x4 stride-2 convolutions (64-128-256-512,
LeakyReLU 0.2) on the image concatenated with the softmax, global average pooling and a linear
score. The adversarial weight is 0.1 with a sigmoid ramp-up over the budget, the values of the
field's code (SSL4MIS), which the tables' DAN rows come from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.registry import register_method

from .base import Method, StepOutput


@dataclass
class DANConfig:
    adv_weight: float = 0.1
    rampup: float = 1.0  # fraction of the budget
    disc_lr: float = 1e-4
    disc_channels: int = 64


class Discriminator(nn.Module):
    """(image, softmax) -> one logit per sample: high = annotated-like."""

    def __init__(self, in_channels: int, num_classes: int, base: int = 64):
        super().__init__()
        chans = [in_channels + num_classes, base, base * 2, base * 4, base * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(chans[-1], 1)

    def forward(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([image, probs.to(image.dtype)], dim=1))
        return self.score(h.mean(dim=(2, 3)))[:, 0]


def adversarial_loss(d_logits_unlabeled: torch.Tensor) -> torch.Tensor:
    """Segmenter's term: BCE of D's scores on unlabeled segmentations against "annotated" (1)."""
    return F.binary_cross_entropy_with_logits(d_logits_unlabeled.float(),
                                              torch.ones_like(d_logits_unlabeled, dtype=torch.float))


def discriminator_loss(d_logits_labeled: torch.Tensor, d_logits_unlabeled: torch.Tensor) -> torch.Tensor:
    """D's term: BCE over all samples, labeled = 1, unlabeled = 0."""
    logits = torch.cat([d_logits_labeled, d_logits_unlabeled]).float()
    target = torch.cat([torch.ones_like(d_logits_labeled), torch.zeros_like(d_logits_unlabeled)]).float()
    return F.binary_cross_entropy_with_logits(logits, target)


@register_method("dan", description="Adversarial network: a discriminator tells labeled from unlabeled segmentations",
                 paper="Zhang et al., MICCAI 2017")
class DAN(Method):
    Config = DANConfig
    paper = "Zhang et al., MICCAI 2017"
    display_name = "DAN"

    def __init__(self, cfg: DANConfig, ctx):
        super().__init__(cfg, ctx)
        self.student = ctx.make_backbone()
        self.discriminator = Discriminator(ctx.in_channels, ctx.num_classes, cfg.disc_channels)

    def modules(self):
        return {"student": self.student, "discriminator": self.discriminator}

    def aux_parameters(self):
        return {"discriminator": list(self.discriminator.parameters())}

    def make_aux_optimizer(self, name, params):
        return torch.optim.Adam(params, lr=self.cfg.disc_lr, betas=(0.9, 0.99))

    def training_step(self, batch, step):
        n_lb = batch.x_lb.shape[0]
        x = torch.cat([batch.x_lb, batch.x_ulb])
        logits = self.student(x)
        probs = logits.float().softmax(1)
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        adv = adversarial_loss(self.discriminator(x[n_lb:], probs[n_lb:]))
        w = self.cfg.adv_weight * self.ramp(step, self.cfg.rampup)
        d_scores = self.discriminator(x, probs.detach())
        d_loss = discriminator_loss(d_scores[:n_lb], d_scores[n_lb:])
        return StepOutput(loss=sup + w * adv, unsup=adv, aux_losses={"discriminator": d_loss},
                          terms={"sup": sup.detach(), "adversarial": adv.detach(), "w_adv": w,
                                 "discriminator": d_loss.detach()})
