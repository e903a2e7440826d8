"""DCT: deep co-training (Qiao, Shen, Zhang, Wang & Yuille, "Deep Co-Training for
Semi-Supervised Image Recognition", ECCV 2018), applied per pixel.

Two networks, independently initialised, both trained on the labeled slices. On unlabeled
slices the co-training term (the paper's L_cot) is the Jensen-Shannon divergence between their
predictions, H((p1 + p2) / 2) - (H(p1) + H(p2)) / 2. The view-difference term (L_dif) keeps the
two from collapsing into each other: g_i(x) is an FGSM adversarial example of network i,
x + eps sign(grad_x CE(p_i(x), y)), with y the label on labeled slices and network i's own
argmax on unlabeled ones; the *other* network must still predict what network i predicted on
the clean slice:
  L_dif = H(p1(x), p2(g1(x))) + H(p2(x), p1(g2(x)))    (cross-entropy, on labeled + unlabeled).
Loss = sup(net1) + sup(net2) + lambda_cot L_cot + lambda_dif L_dif with the paper's
lambda_cot = 10, lambda_dif = 0.5, eps = 0.02 and a sigmoid ramp-up of both weights (over the
first 80 of 600 epochs in the reference setting, ~13% of the budget). Inference uses network 1.

``variant="rotation"``: SSL4MIS ships a single-network method under this name. It rotates the
unlabeled slices by k x 90 degrees (k uniform in 0..3) and makes the prediction on the rotated
slice and the rotated prediction agree, 0.5 [MSE(sg(f(rot x)), rot f(x)) + MSE(f(rot x),
sg(rot f(x)))] on softmax maps, weight 0.1 ramped over the budget. It is not co-training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_bench.registry import register_method

from .base import Method, StepOutput
from .variant import check_variant, resolved

VARIANTS = {
    "paper": {"rampup": 80 / 600},
    "rotation": {"rampup": 1.0},
}


@dataclass
class DCTConfig:
    variant: str = "paper"
    lambda_cot: float = 10.0
    lambda_dif: float = 0.5
    epsilon: float = 0.02  # FGSM step in input units
    rampup: float | None = None  # fraction of the budget; None: paper 80/600, rotation 1.0
    rotation_weight: float = 0.1  # variant "rotation" only


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of probabilities ``p`` (B, C, ...), natural log."""
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def js_divergence(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of two softmax predictions, averaged over pixels."""
    p1, p2 = logits1.float().softmax(1), logits2.float().softmax(1)
    return (entropy((p1 + p2) / 2) - (entropy(p1) + entropy(p2)) / 2).mean()


def soft_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """H(target, softmax(logits)) = -sum_c t_c log q_c, averaged over pixels."""
    return -(target_probs.float() * logits.float().log_softmax(1)).sum(1).mean()


def fgsm(net, x: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """x + eps sign(grad_x CE(net(x), target)): a step that increases the net's loss.

    Only the input is differentiated (no parameter gradient is left behind); the result is
    detached, a fixed input for the other network.
    """
    x_adv = x.detach().requires_grad_(True)
    loss = F.cross_entropy(net(x_adv).float(), target)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return (x_adv + eps * grad.sign()).detach()


def rotation_consistency(logits: torch.Tensor, rot_logits: torch.Tensor, k: int) -> torch.Tensor:
    """0.5 [MSE(sg(p(rot x)), rot p(x)) + MSE(p(rot x), sg(rot p(x)))] on softmax maps."""
    p_rot_of_pred = torch.rot90(logits.float().softmax(1), k, (2, 3))
    p_of_rot = rot_logits.float().softmax(1)
    return 0.5 * (F.mse_loss(p_rot_of_pred, p_of_rot.detach()) + F.mse_loss(p_of_rot, p_rot_of_pred.detach()))


@register_method("dct", description="Deep co-training: two nets, JS agreement plus adversarial view difference",
                 paper="Qiao et al., ECCV 2018")
class DCT(Method):
    Config = DCTConfig
    paper = "Qiao et al., ECCV 2018"
    display_name = "DCT"

    def __init__(self, cfg: DCTConfig, ctx):
        check_variant("dct", cfg.variant, VARIANTS)
        super().__init__(cfg, ctx)
        self.rampup = resolved(cfg, "rampup", VARIANTS)
        self.net1 = ctx.make_backbone()
        # the rotation variant is a single network
        self.net2 = ctx.make_backbone() if cfg.variant == "paper" else None

    def modules(self):
        return {"net1": self.net1} if self.net2 is None else {"net1": self.net1, "net2": self.net2}

    def predictor(self):
        return self.net1

    def training_step(self, batch, step):
        w = self.ramp(step, self.rampup)
        if self.cfg.variant == "rotation":
            return self._rotation_step(batch, step, w)
        cfg = self.cfg
        n_lb = batch.x_lb.shape[0]
        x = torch.cat([batch.x_lb, batch.x_ulb])
        logits1, logits2 = self.net1(x), self.net2(x)
        sup = self.supervised_loss(logits1[:n_lb], batch.y_lb) + self.supervised_loss(logits2[:n_lb], batch.y_lb)
        cot = js_divergence(logits1[n_lb:], logits2[n_lb:])
        # FGSM targets: labels where known, each net's own prediction elsewhere
        y1 = torch.cat([batch.y_lb, logits1[n_lb:].argmax(1)]).long()
        y2 = torch.cat([batch.y_lb, logits2[n_lb:].argmax(1)]).long()
        adv1 = fgsm(self.net1, x, y1, cfg.epsilon)
        adv2 = fgsm(self.net2, x, y2, cfg.epsilon)
        dif = (soft_cross_entropy(logits1.softmax(1), self.net2(adv1))
               + soft_cross_entropy(logits2.softmax(1), self.net1(adv2)))
        unsup = cfg.lambda_cot * cot + cfg.lambda_dif * dif
        return StepOutput(loss=sup + w * unsup, unsup=unsup,
                          terms={"sup": sup.detach(), "cot": cot.detach(),
                                 "dif": dif.detach(), "w_ramp": w})

    def _rotation_step(self, batch, step, w):
        n_lb = batch.x_lb.shape[0]
        logits = self.net1(torch.cat([batch.x_lb, batch.x_ulb]))
        k = int(torch.randint(0, 4, (1,), generator=self.ctx.generator))
        rot_logits = self.net1(torch.rot90(batch.x_ulb, k, (2, 3)))
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        cons = rotation_consistency(logits[n_lb:], rot_logits, k)
        w = self.cfg.rotation_weight * w
        return StepOutput(loss=sup + w * cons, unsup=cons,
                          terms={"sup": sup.detach(), "rotation": cons.detach(), "w_cons": w})
