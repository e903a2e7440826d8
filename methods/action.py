"""ACTION: anatomical-aware contrastive distillation (You, Dai, Min, Staib, Duncan, "Bootstrapping
Semi-supervised Medical Image Segmentation with Anatomical-aware Contrastive Distillation",
IPMI 2023). Implemented from the paper (its Section 2 and implementation details); the released
code does not run as published and its local stage scrambles embeddings, so it is not followed.

A student (U-Net + heads, ``methods/action_heads.py``) and an EMA teacher (m = 0.99, same
network and projection heads, never given gradients) train in three stages, by default 100, 100
and 200 epochs -> 1/4, 1/4 and 1/2 of the iteration budget:

* **i, global contrastive distillation** (unlabeled slices; encoder + H^g + H^g_p trainable).
  Query q: the teacher sees a ``teacher_aug`` view, the student a ``student_aug`` view, drawn
  independently from ``batch.x_ulb_raw`` with ``ctx.augment`` (no pixel alignment needed).
  z_t = H^g_t(E_t(q_t)), z*_s = H^g_p(H^g_s(E_s(q_s))). Anchors a_j are the teacher's embeddings
  of the randomly sampled unlabeled slices of earlier batches, kept in a FIFO memory bank of
  ``bank_size`` = 36 (filled after each step, as in ISD; the very first step of the stage uses
  the current batch's teacher embeddings). Loss KL(p_t || p_s), tau_t = 0.01, tau_s = 0.1
  (``action_losses.distillation_kl``; the "-log" of Eq. 1-2 is a typo, see there).
* **ii, local contrastive distillation** (labeled + unlabeled; whole U-Net + H^l + H^l_p).
  Local embeddings: H^l projects the logits to 512-d per pixel (1x1 conv) and they are averaged
  over a ``local_grid`` x ``local_grid`` partition, so each image gives grid^2 region embeddings.
  The two views are pixel-aligned (the loop's weak geometry; "strong" adds photometric changes),
  so region k of the student view and region k of the teacher view show the same anatomy. Each
  student region is a query; the anchors are *all* teacher region embeddings of the (up to 36)
  unlabeled slices in a second FIFO bank. Same KL loss, plus 0.5 (CE + Dice) on labeled slices.
* **iii, anatomical contrast fine-tuning** (weights of stage ii carried over; student and
  teacher both continue, no re-sync, as the paper re-uses F_s and F_t; whole U-Net + H_r).
  L = 0.5 (CE + Dice) on labeled + ``w_unsup_ce`` CE on the teacher's pseudo-labels of the
  teacher view, pixels with confidence > theta_s = 0.97 only (``pseudo_label_ce``) +
  ``w_anco`` AnCo (Eq. 4-7, ``sampled_anco``) on H_r embeddings of the labeled slices (ground
  truth labels, every pixel) and of the unlabeled student views (teacher pseudo-labels,
  confidence > ``anco_valid_threshold``); hard queries are pixels whose *student* softmax
  probability of their (pseudo-)label is <= theta_s. 256 queries and 512 negative keys per class
  per mini-batch, tau_an = 0.5. The paper gives no weight for AnCo, i.e. 1.0 (the released
  stage-iii script multiplies it by 0.01).

Ablations (Tables 3 and 4), config ``ablation``:
  none; ``no-rsi``: no randomly sampled images, i.e. only the query's own two views, which is
  BYOL's loss 2 - 2 cos(z*_s, z_t) in stages i and ii (a KL over anchors from one image's own
  views degenerates: a single anchor gives p = 1 and a zero loss); ``no-stage2``;
  ``no-rsi-no-stage2``; ``no-stage3`` (the stage-ii model is the result); ``no-anco`` (stage iii
  without AnCo); ``no-unsup``: stage iii with the supervised loss only -- Table 3's note says
  L_unsup is the pseudo-label CE *together with* L_anco, so both go; ``vanilla``: BYOL stage i
  (as no-rsi), no stage ii, then a ``finetune`` stage in place of stage iii with the supervised
  loss only (the encoder alone cannot segment). Skipped stages are absent from ``stages()``;
  the fractions are renormalised over the stages that run, so every variant takes the same total
  number of gradient steps. ``student_aug`` / ``teacher_aug`` in {weak, strong} (Table 4,
  default strong / weak); with aligned views (stages ii, iii) weak/weak gives both networks the
  same tensor and strong/strong draws the teacher's photometric change independently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_bench.config import ConfigError
from ssl_bench.ema import make_teacher
from ssl_bench.losses import supervised_loss
from ssl_bench.registry import register_method

from .action_heads import ActionNet, LocalPredictor, MLPPredictor, RepresentationHead
from .action_losses import byol_loss, distillation_kl, pseudo_label_ce, sampled_anco
from .base import Method, Stage, StepOutput

ABLATIONS = ("none", "vanilla", "no-rsi", "no-stage2", "no-rsi-no-stage2", "no-stage3", "no-anco", "no-unsup")
AUGS = ("weak", "strong")


@dataclass
class ActionConfig:
    ema_momentum: float = 0.99
    tau_t: float = 0.01  # teacher temperature, Eq. 1
    tau_s: float = 0.1  # student temperature, Eq. 2
    bank_size: int = 36  # images in each FIFO memory bank of anchors
    proj_dim: int = 512  # H^g, H^l, predictors and H_r
    local_grid: int = 8  # stage ii: regions per side of the local-embedding grid
    w_local: float = 1.0  # stage ii: weight of the local distillation term
    theta_s: float = 0.97  # stage iii: pseudo-label and hard-query confidence threshold
    anco_valid_threshold: float = 0.97  # unlabeled pixels join AnCo above this teacher confidence
    tau_an: float = 0.5  # AnCo temperature
    w_unsup_ce: float = 1.0
    w_anco: float = 1.0
    num_queries: int = 256  # per class per mini-batch
    num_negatives: int = 512  # per class per mini-batch
    prototype_pixels: int = 512  # pixels per class averaged into r^{c,+} (0: all pixels)
    stage_epochs: tuple[int, int, int] = (100, 100, 200)
    paper_batch_size: int = 6  # documentation only: the loop's batch size is a run setting
    ablation: str = "none"
    student_aug: str = "strong"
    teacher_aug: str = "weak"

    def __post_init__(self):
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"action: unknown ablation {self.ablation!r}; "
                              f"choose from {', '.join(ABLATIONS)}")
        for key in ("student_aug", "teacher_aug"):
            if getattr(self, key) not in AUGS:
                raise ConfigError(f"action: {key}={getattr(self, key)!r}; use weak or strong")
        if self.bank_size < 1 or self.local_grid < 1:
            raise ConfigError(f"action: bank_size={self.bank_size}, local_grid={self.local_grid}; both must be >= 1")
        if len(self.stage_epochs) != 3 or min(self.stage_epochs) <= 0:
            raise ConfigError(f"action: stage_epochs={self.stage_epochs}; give three positive epoch counts")


class FifoBank:
    """A first-in-first-out memory of the newest ``size`` embeddings (rows), oldest first."""

    def __init__(self, size: int):
        self.size = size
        self.items: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.items is None else len(self.items)

    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float()
        merged = rows if self.items is None else torch.cat([self.items.to(rows.device), rows])
        self.items = merged[-self.size:].clone()

    def state(self) -> torch.Tensor | None:
        return None if self.items is None else self.items.cpu()

    def load(self, items: torch.Tensor | None) -> None:
        self.items = None if items is None else items.detach().float()


@register_method("action", description="ACTION: global/local contrastive distillation, then AnCo fine-tuning",
                 paper="You et al., IPMI 2023")
class Action(Method):
    Config = ActionConfig
    paper = "You et al., IPMI 2023"
    display_name = "ACTION"

    def __init__(self, cfg: ActionConfig, ctx):
        super().__init__(cfg, ctx)
        backbone = ctx.make_backbone()
        levels = backbone.encoder_channels[-1] + sum(backbone.decoder_channels)
        self.net = ActionNet(backbone, ctx.num_classes, cfg.proj_dim, cfg.local_grid)
        self.predictors = nn.ModuleDict({"global": MLPPredictor(cfg.proj_dim),
                                         "local": LocalPredictor(cfg.proj_dim)})
        self.rep_head = RepresentationHead(levels, cfg.proj_dim)
        self.teacher = make_teacher(self.net)
        self.global_bank = FifoBank(cfg.bank_size)
        self.local_bank = FifoBank(cfg.bank_size)

    # -- switches ---------------------------------------------------------------------------
    @property
    def rsi(self) -> bool:
        return self.cfg.ablation not in ("vanilla", "no-rsi", "no-rsi-no-stage2")

    @property
    def use_unsup(self) -> bool:
        return self.cfg.ablation != "no-unsup"

    @property
    def use_anco(self) -> bool:
        return self.cfg.ablation not in ("no-anco", "no-unsup")

    def ablation_tag(self) -> str:
        return self.cfg.ablation

    def augment_tag(self) -> str:
        return f"{self.cfg.student_aug}-{self.cfg.teacher_aug}"

    # -- networks ---------------------------------------------------------------------------
    def modules(self):
        return {"student": self.net, "predictors": self.predictors, "rep_head": self.rep_head,
                "teacher": self.teacher}

    def teachers(self):
        return {"teacher": (self.teacher, self.net, self.cfg.ema_momentum)}

    def predictor(self) -> nn.Module:
        return self.net.backbone  # heads and predictors are training-only

    def trainable_parameters(self):
        net = self.net
        if self.stage == "i":
            return (net.encoder_parameters() + list(net.global_head.parameters())
                    + list(self.predictors["global"].parameters()))
        params = list(net.backbone.parameters())
        if self.stage == "ii":
            params += list(net.local_head.parameters()) + list(self.predictors["local"].parameters())
        elif self.stage == "iii" and self.use_anco:
            params += list(self.rep_head.parameters())
        return params

    # -- stages -----------------------------------------------------------------------------
    def stages(self):
        e1, e2, e3 = self.cfg.stage_epochs
        a = self.cfg.ablation
        plan = [("i", e1, False)]
        if a == "vanilla":
            plan.append(("finetune", e3, True))
        else:
            if a not in ("no-stage2", "no-rsi-no-stage2"):
                plan.append(("ii", e2, True))
            if a != "no-stage3":
                plan.append(("iii", e3, True))
        total = sum(e for _, e, _ in plan)
        return [Stage(name, e / total, uses_labels=lab) for name, e, lab in plan]

    def set_stage(self, name: str) -> None:
        names = [s.name for s in self.stages()]
        if name not in names:
            raise ValueError(f"action (ablation {self.cfg.ablation}) has no stage {name!r}; stages: {names}")
        self.stage = name

    def extra_state(self) -> dict:
        return {**super().extra_state(), "global_bank": self.global_bank.state(),
                "local_bank": self.local_bank.state()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.global_bank.load(state.get("global_bank"))
        self.local_bank.load(state.get("local_bank"))

    # -- views ------------------------------------------------------------------------------
    def _independent_views(self, batch):
        """(student view, teacher view) of the unlabeled slices, each with its own geometry."""
        aug, g = self.ctx.augment, self.ctx.generator

        def view(kind):
            return (aug.strong if kind == "strong" else aug.weak)(batch.x_ulb_raw, None, g)[0]

        return view(self.cfg.student_aug), view(self.cfg.teacher_aug)

    def _aligned_views(self, batch):
        """(student view, teacher view) with the same geometry: the loop's weak/strong pair."""
        weak, strong = batch.x_ulb, batch.x_ulb_strong
        s_aug, t_aug = self.cfg.student_aug, self.cfg.teacher_aug
        student = strong if s_aug == "strong" else weak
        if t_aug == "weak":
            teacher = weak
        elif s_aug == "strong":  # both strong: an independent photometric draw for the teacher
            teacher = self.ctx.augment.photometric(weak, self.ctx.generator)
        else:
            teacher = strong
        return student, teacher

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch, step):
        return {"i": self._stage_global, "ii": self._stage_local, "iii": self._stage_anco,
                "finetune": self._stage_finetune}[self.stage](batch)

    def _distil(self, z_t, z_s, bank: FifoBank) -> torch.Tensor:
        """KL distillation against the bank's anchors (then enqueue z_t), or BYOL without RSI."""
        dim = z_t.shape[-1]
        if not self.rsi:
            return byol_loss(z_s.reshape(-1, dim), z_t.reshape(-1, dim))
        anchors = bank.items if len(bank) else z_t
        loss = distillation_kl(z_t.reshape(-1, dim), z_s.reshape(-1, dim), anchors.reshape(-1, dim),
                               self.cfg.tau_t, self.cfg.tau_s)
        bank.push(z_t)
        return loss

    def _stage_global(self, batch):
        x_s, x_t = self._independent_views(batch)
        z_s = self.predictors["global"](self.net.global_embedding(x_s))
        with torch.no_grad():
            z_t = self.teacher.global_embedding(x_t).float()
        loss = self._distil(z_t, z_s, self.global_bank)
        name = "global_kl" if self.rsi else "global_byol"
        return StepOutput(loss=loss, unsup=loss, terms={name: loss.detach()})

    def _stage_local(self, batch):
        n_lb = batch.x_lb.shape[0]
        x_s, x_t = self._aligned_views(batch)
        logits = self.net.backbone(torch.cat([batch.x_lb, x_s]))
        sup = supervised_loss(logits[:n_lb], batch.y_lb)
        # (B, D, g, g) -> (B, g*g, D): one query per region
        e_s = self.predictors["local"](self.net.local_head(logits[n_lb:])).flatten(2).transpose(1, 2)
        with torch.no_grad():
            e_t = self.teacher.local_embedding(x_t).float().flatten(2).transpose(1, 2)
        local = self._distil(e_t, e_s, self.local_bank)
        name = "local_kl" if self.rsi else "local_byol"
        return StepOutput(loss=sup + self.cfg.w_local * local, unsup=local,
                          terms={"sup": sup.detach(), name: local.detach()})

    def _stage_finetune(self, batch):
        sup = supervised_loss(self.net.backbone(batch.x_lb), batch.y_lb)
        return StepOutput(loss=sup, terms={"sup": sup.detach()})

    def _stage_anco(self, batch):
        cfg = self.cfg
        n_lb = batch.x_lb.shape[0]
        x_s, x_t = self._aligned_views(batch)
        x = torch.cat([batch.x_lb, x_s])
        logits, enc, dec = self.net.backbone.forward_features(x)
        sup = supervised_loss(logits[:n_lb], batch.y_lb)
        if not self.use_unsup:
            return StepOutput(loss=sup, terms={"sup": sup.detach()})
        with torch.no_grad():
            t_probs = self.teacher.backbone(x_t).float().softmax(1)
        ce_u, confident = pseudo_label_ce(logits[n_lb:], t_probs, cfg.theta_s)
        unsup = cfg.w_unsup_ce * ce_u
        terms = {"sup": sup.detach(), "pseudo_ce": ce_u.detach(),
                 "confident": confident.float().mean()}
        if self.use_anco:
            anco = self._anco(x, logits, [enc[-1], *dec], batch.y_lb, t_probs)
            unsup = unsup + cfg.w_anco * anco.loss
            terms.update(anco=anco.loss.detach(), anco_classes=len(anco.classes),
                         anco_hard=anco.n_hard)
        return StepOutput(loss=sup + unsup, unsup=unsup, terms=terms)

    def _anco(self, x, logits, levels, y_lb, t_probs):
        cfg = self.cfg
        H, W = x.shape[-2:]
        conf, pseudo = t_probs.max(1)
        labels = torch.cat([y_lb.long(), pseudo])
        valid = torch.cat([torch.ones_like(y_lb, dtype=torch.bool), conf > cfg.anco_valid_threshold])

        def embed_at(flat):
            b, rest = flat // (H * W), flat % (H * W)
            return self.rep_head.at_points(levels, b, rest // W, rest % W, (H, W))

        return sampled_anco(embed_at, labels, valid, logits.detach().float().softmax(1), cfg.theta_s,
                            cfg.tau_an, cfg.num_queries, cfg.num_negatives, cfg.prototype_pixels,
                            self.ctx.generator)
