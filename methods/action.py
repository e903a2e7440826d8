"""ACTION: anatomical-aware contrastive distillation (You, Dai, Min, Staib, Duncan, "Bootstrapping
Semi-supervised Medical Image Segmentation with Anatomical-aware Contrastive Distillation",
IPMI 2023). Two variants (``--set method.variant=...``): ``paper`` (default), our reading of the
paper's Section 2 and implementation details, and ``released``, the authors' released code
(github.com/charlesyou999648/ACTION: ``code/train_2D.sh``, ``train_2D_pretrain.py``,
``train_2D_action.py``, ``model.py``), whose stage iii is ReCo's (Liu et al., ICLR 2022).

A student (U-Net + heads, ``methods/action_heads.py``) and an EMA teacher (m = 0.99, same
network and projection heads, never given gradients) train in three stages:

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
  unlabeled slices in a second FIFO bank. Same KL loss, plus 0.5 (CE + Dice) on labeled slices,
  plus ``w_global_stage2`` x the stage-i global KL on the same views (H^g, H^g_p then train too).
* **iii, anatomical contrast fine-tuning** (weights of stage ii carried over; whole U-Net + H_r).
  L = 0.5 (CE + Dice) on labeled + ``w_unsup_ce`` x pseudo-label CE towards the teacher's argmax
  on the teacher view (confidence threshold theta_s = 0.97) + ``w_anco`` x AnCo (Eq. 4-7,
  ``action_losses.sampled_anco``) on H_r embeddings of the labeled slices (ground truth, every
  pixel) and of the unlabeled student views (teacher pseudo-labels, confidence >
  ``anco_valid_threshold``); hard queries are pixels whose *student* softmax probability of
  their (pseudo-)label is <= theta_s. 256 queries and 512 negative keys per class per
  mini-batch, tau_an = 0.5.

What the two variants set (each is a config field: ``None`` takes the variant's value, an
explicit ``--set method.<field>=...`` wins), paper reading first, released code second:

* ``w_anco``: 1.0 (the paper gives no weight) / 0.01 (``--k1 0.01`` of train_2D_action.py).
* ``anco_key_grad``: true, the prototype and the negative keys carry gradients (the paper is
  silent; this is our departure) / false, keys are built under no_grad and only the queries are
  trained (as in ReCo).
* ``anco_valid_threshold``: 0.97 (the paper names no gate for unlabeled pixels; we reuse
  theta_s) / 0.7 (``--weak_threshold``).
* ``resync_teacher``: false, stage iii re-uses F_s and F_t "as initialization" / true, student
  *and* teacher start stage iii from the stage-ii student. Done in ``on_stage_start``, which the
  loop calls after any checkpoint is loaded and only at step 0 of the stage.
* ``pseudo_ce``: ``masked``, CE summed over pixels with teacher confidence > theta_s, divided by
  all pixels (FixMatch) / ``reco``, CE on every pixel, each image weighted by its fraction of
  pixels >= theta_s, mean over the pixels with CE > 0 (ReCo's ``compute_unsupervised_loss``).
* ``mix``: ``none`` / ``cutmix`` (``--apply_aug cutmix`` in train_2D.sh; the script's own default
  is ``classmix``, also available): stage iii mixes each unlabeled student view with the next
  one, and the teacher's probabilities with the same masks (``action_mix``).
* ``anco_form``: ``paper``, dot products with the plain class mean, G = softmax(dot products),
  a class without hard pixels takes queries from all its pixels / ``reco``, cosine with the
  renormalised mean, G = softmax(cos / tau_an), such a class is skipped (but still counted in
  the class mean). See ``action_losses``.
* ``w_global_stage2``: 0 (stage ii trains the local term only) / 1 (``--k1 1`` in stage ii keeps
  the global KL on, on the same aligned views).
* ``stage_epochs``: 100 / 100 / 200 epochs, i.e. 1/4, 1/4, 1/2 of the budget / 30k / 30k / 30k
  iterations, i.e. thirds (the release trains 90k steps in all).

Switches of both variants: ``teacher_eval`` (pseudo-labels of stage iii from the teacher in eval
mode; default off: the released code, ReCo and our paper reading run it in train mode, dropout
on) and the ablations below.

Remaining differences from the released code, in both variants (not switchable):
* stages i/ii: the release feeds one image (same geometry) to both networks, labeled slices
  included, with a Gaussian blur (p 0.5) on the teacher's copy (its colour jitter is applied in
  place and so reaches both); here stage i draws independent views of unlabeled slices and
  stage ii aligned ones, student strong / teacher weak (Table 4's default);
* its local stage compares 36-value chunks of reshaped windowed logits (scrambled across
  images); here region embeddings on a ``local_grid`` grid. Its heads are linear without a
  nonlinearity, its teacher's global head is trained by gradient (not EMA), and its anchor
  queues start from random vectors and restart at stage ii; here MLP heads, EMA teacher heads,
  FIFO banks of teacher embeddings carried across stages;
* stage iii: the release forwards labeled (4) and unlabeled (4) slices separately (two BN
  batches), perturbs the mixed images with colour jitter, Gaussian blur and AdvMorph (a module
  missing from the release), steps the EMA twice per iteration and uses Nesterov SGD; here one
  forward of labeled + unlabeled, one EMA step, the loop's SGD, and by default the loop's
  photometric strong view before mixing (``strong_view=released``: the release's jitter and blur
  after mixing, without AdvMorph; protocol ``field`` v2 sets it). The release also trains with no
  geometric augmentation (its rot/flip lines are commented out): ``augment.mode=none`` (field v2). Its AnCo draws 512 negatives per query and averages all valid pixels into the
  prototypes (``prototype_pixels=0`` does that here), its H_r starts with a 3x3 convolution and
  upsamples with ``align_corners=True``;
* the release tests the last stage-iii student (no validation); the loop reports best-on-val and
  last (a protocol picks one).

In 3D (the Left Atrium track, the field's V-Net on (B, 1, Z, Y, X) patches) the same three
stages run, written once for any spatial rank: H^g pools the V-Net's deepest encoder feature
(256 channels) over its three spatial dims, H^l pools the logits over a ``local_grid`` ^ 3 grid
(1x1x1 convolutions), H_r reads the bottleneck and the four decoder features (256 + 128 + 64 + 32
+ 16 channels) by trilinear interpolation at the sampled voxels, the KL, pseudo-label CE and AnCo
take flat voxel indices, and CutMix cuts a cuboid (``action_mix``). The release's 3D scripts
(charlesyou999648/ACTION ``code/train_3D.sh``, ``train_3D_pretrain.py``, ``train_3D_action.py``,
``model_3D.py``, ``augment_3d.py``) wrap the V-Net in ``ISD_3d``: stage i (``--train_decoder 0``)
is the latent KL alone, stage ii adds the supervised loss and the output KL (k1 = k2 = 1), both
with batch 2 (1 labeled + 1 unlabeled), a 36-entry queue, T_s 0.1 and **T_t 0.6**, 128-d latent
heads, the student's view colour-jittered and noised; stage iii (``--batch_size 1``: 1 labeled +
1 unlabeled patch) starts student and teacher from the stage-ii student and trains 0.5 (CE +
Dice) + ReCo-weighted CE + 0.01 x ReCo's loss on a 128-d ``RepresentationHead_3d`` of the
decoder features, ClassMix (the script's default ``--apply_aug``, which train_3D.sh leaves),
strong threshold 0.97, weak 0.7, one EMA step per iteration; 30000 iterations per stage. The
``released`` variant therefore holds in 3D as in 2D, and protocol ``la-field``'s ACTION recipe
adds the 3D script's own values (``tau_t=0.6``, ``proj_dim=128``, ``mix=classmix``, batch 1 + 1,
30000 per stage). Not ported in 3D, each refused or named: the release's 3D perturbation of the
mixed patch (``strong_view=released`` is an error on a 3D backbone, see ``action_mix``); its
local head (20^3 windows of the logits at stride 10, each pooled to 4^3, and a 700-window queue)
is replaced by the region grid, as in 2D. Its V-Net (``networks/vnetWithArgs.py`` via
``net_factory_3dArgs.py``) is the field's, but its heads read other features: the "latent" of
H^g is the first decoder sum (up-sampled bottleneck + 4th encoder feature, 128 channels), so its
stage i also trains the first up-sampling block, and H_r reads the four decoder sums before their
convolutions plus the last decoder feature (128 + 64 + 32 + 16 + 16). Here H^g reads the encoder's
output, the bottleneck (the paper's E(.)), and stage i trains the down path only; H_r reads the
bottleneck and the four decoder features after their convolutions.

Ablations (Tables 3 and 4), config ``ablation``:
  none; ``no-rsi``: no randomly sampled images, i.e. only the query's own two views, which is
  BYOL's loss 2 - 2 cos(z*_s, z_t) in stages i and ii (a KL over anchors from one image's own
  views degenerates: a single anchor gives p = 1 and a zero loss); ``no-stage2``;
  ``no-rsi-no-stage2``; ``no-stage3`` (the stage-ii model is the result); ``no-anco`` (stage iii
  without AnCo); ``no-unsup``: stage iii with the supervised loss only -- Table 3's note says
  L_unsup is the pseudo-label CE *together with* L_anco, so both go; ``no-pseudo-ce``: the
  note's other reading, L_unsup = the pseudo-label CE alone, so stage iii = supervised + AnCo;
  ``vanilla``: BYOL stage i (as no-rsi), no stage ii, then a ``finetune`` stage in place of
  stage iii with the supervised loss only (the encoder alone cannot segment). Skipped stages are
  absent from ``stages()``; the fractions are renormalised over the stages that run, so every
  variant takes the same total number of gradient steps. ``student_aug`` / ``teacher_aug`` in
  {weak, strong} (Table 4, default strong / weak); with aligned views (stages ii, iii) weak/weak
  gives both networks the same tensor and strong/strong draws the teacher's photometric change
  independently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_bench.config import ConfigError
from ssl_bench.ema import make_teacher
from ssl_bench.registry import register_method

from .action_heads import ActionNet, LocalPredictor, MLPPredictor, RepresentationHead
from .action_losses import (ANCO_FORMS, byol_loss, distillation_kl, pseudo_label_ce, reco_weighted_ce,
                            sampled_anco)
from .action_mix import MIXES, STRONG_VIEWS, mix_masks, mix_with_next, release_perturbation
from .base import Method, Stage, StepOutput
from .variant import check_variant, resolve_all

ABLATIONS = ("none", "vanilla", "no-rsi", "no-stage2", "no-rsi-no-stage2", "no-stage3", "no-anco", "no-unsup",
             "no-pseudo-ce")
AUGS = ("weak", "strong")
PSEUDO_CE = {"masked": pseudo_label_ce, "reco": reco_weighted_ce}
VARIANTS = {
    "paper": {"w_anco": 1.0, "anco_key_grad": True, "anco_valid_threshold": 0.97, "resync_teacher": False,
              "pseudo_ce": "masked", "mix": "none", "anco_form": "paper", "w_global_stage2": 0.0,
              "stage_epochs": (100, 100, 200)},
    "released": {"w_anco": 0.01, "anco_key_grad": False, "anco_valid_threshold": 0.7, "resync_teacher": True,
                 "pseudo_ce": "reco", "mix": "cutmix", "anco_form": "reco", "w_global_stage2": 1.0,
                 "stage_epochs": (30000, 30000, 30000)},
}


@dataclass
class ActionConfig:
    variant: str = "paper"  # paper | released: the defaults of the fields left at None below
    ema_momentum: float = 0.99
    tau_t: float = 0.01  # teacher temperature, Eq. 1
    tau_s: float = 0.1  # student temperature, Eq. 2
    bank_size: int = 36  # images in each FIFO memory bank of anchors
    proj_dim: int = 512  # H^g, H^l, predictors and H_r
    local_grid: int = 8  # stage ii: regions per side of the local-embedding grid
    w_local: float = 1.0  # stage ii: weight of the local distillation term
    w_global_stage2: float | None = None  # stage ii: weight of the global KL (paper 0, released 1)
    theta_s: float = 0.97  # stage iii: pseudo-label and hard-query confidence threshold
    anco_valid_threshold: float | None = None  # unlabeled pixels join AnCo above this teacher confidence
    tau_an: float = 0.5  # AnCo temperature
    w_unsup_ce: float = 1.0
    pseudo_ce: str | None = None  # masked (FixMatch) | reco (confidence-weighted, ReCo)
    w_anco: float | None = None  # paper 1.0, released 0.01
    anco_key_grad: bool | None = None  # gradients through AnCo's keys (prototypes, negatives)
    anco_form: str | None = None  # paper (dot, softmax(G), fall back) | reco (cosine, softmax(cos/tau), skip)
    mix: str | None = None  # stage iii mixing of unlabeled views: none | cutmix | classmix
    resync_teacher: bool | None = None  # teacher <- student at the start of stage iii
    teacher_eval: bool = False  # stage iii pseudo-labels from the teacher in eval mode
    num_queries: int = 256  # per class per mini-batch
    num_negatives: int = 512  # per class per mini-batch
    prototype_pixels: int = 512  # pixels per class averaged into r^{c,+} (0: all pixels)
    stage_epochs: tuple[int, int, int] | None = None  # relative stage lengths (paper epochs / released iterations)
    paper_batch_size: int = 6  # documentation only: the loop's batch size is a run setting
    ablation: str = "none"
    student_aug: str = "strong"
    teacher_aug: str = "weak"
    # stage iii student view: harness (the loop's photometric strong view, before mixing) or
    # released (the weak view, mixed, then the release's colour jitter + blur: action_mix.release_perturbation)
    strong_view: str = "harness"

    def __post_init__(self):
        try:
            check_variant("action", self.variant, VARIANTS)
        except ValueError as exc:
            raise ConfigError(str(exc).replace("--set variant", "--set method.variant")) from None
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"action: unknown ablation {self.ablation!r}; "
                              f"choose from {', '.join(ABLATIONS)}")
        choices = {"student_aug": AUGS, "teacher_aug": AUGS, "pseudo_ce": (None, *PSEUDO_CE),
                   "anco_form": (None, *ANCO_FORMS), "mix": (None, *MIXES), "strong_view": STRONG_VIEWS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"action: {key}={getattr(self, key)!r}; use one of "
                                  f"{', '.join(a for a in allowed if a is not None)}")
        if self.bank_size < 1 or self.local_grid < 1:
            raise ConfigError(f"action: bank_size={self.bank_size}, local_grid={self.local_grid}; both must be >= 1")
        if self.stage_epochs is not None and (len(self.stage_epochs) != 3 or min(self.stage_epochs) <= 0):
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

    def load(self, items: torch.Tensor | None, device: torch.device | None = None) -> None:
        """Restore ``state()``'s rows on ``device`` (the networks' device: a checkpoint or the
        compile fallback's rollback keeps them on the CPU, and the next query is on the device)."""
        self.items = None if items is None else items.detach().float().to(device or items.device)


@register_method("action", description="ACTION: global/local contrastive distillation, then AnCo fine-tuning",
                 paper="You et al., IPMI 2023")
class Action(Method):
    Config = ActionConfig
    paper = "You et al., IPMI 2023"
    display_name = "ACTION"

    def __init__(self, cfg: ActionConfig, ctx):
        super().__init__(resolve_all(cfg, VARIANTS), ctx)  # self.cfg: every None filled in
        backbone = ctx.make_backbone()
        levels = backbone.encoder_channels[-1] + sum(backbone.decoder_channels)
        self.net = ActionNet(backbone, ctx.num_classes, cfg.proj_dim, cfg.local_grid)
        if self.net.spatial_dims != 2 and self.cfg.strong_view == "released":
            raise ConfigError("action: strong_view=released (the release's 2D colour jitter + blur after mixing) is "
                              "not ported to 3D (its augment_3d.py batch_transform); use strong_view=harness")
        self.predictors = nn.ModuleDict({"global": MLPPredictor(cfg.proj_dim),
                                         "local": LocalPredictor(cfg.proj_dim, self.net.spatial_dims)})
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
    def use_pseudo_ce(self) -> bool:
        return self.cfg.ablation not in ("no-unsup", "no-pseudo-ce")

    @property
    def use_anco(self) -> bool:
        return self.cfg.ablation not in ("no-anco", "no-unsup")

    @property
    def global_in_stage2(self) -> bool:
        return self.cfg.w_global_stage2 > 0

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
            if self.global_in_stage2:
                params += list(net.global_head.parameters()) + list(self.predictors["global"].parameters())
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

    def on_stage_start(self, name: str) -> None:
        if name == "iii" and self.cfg.resync_teacher:  # the released stage iii loads the student twice
            self.teacher.load_state_dict(self.net.state_dict())

    def extra_state(self) -> dict:
        return {**super().extra_state(), "global_bank": self.global_bank.state(),
                "local_bank": self.local_bank.state()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        device = next(self.net.parameters()).device
        self.global_bank.load(state.get("global_bank"), device)
        self.local_bank.load(state.get("local_bank"), device)

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
        logits, enc, _ = self.net.backbone.forward_features(torch.cat([batch.x_lb, x_s]))
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        # (B, D, g, ..., g) -> (B, g^dims, D): one query per region
        e_s = self.predictors["local"](self.net.local_head(logits[n_lb:])).flatten(2).transpose(1, 2)
        with torch.no_grad():
            t_logits, t_enc, _ = self.teacher.backbone.forward_features(x_t)
            e_t = self.teacher.local_head(t_logits).float().flatten(2).transpose(1, 2)
        local = self._distil(e_t, e_s, self.local_bank)
        kind = "kl" if self.rsi else "byol"
        unsup = self.cfg.w_local * local
        terms = {"sup": sup.detach(), f"local_{kind}": local.detach()}
        if self.global_in_stage2:  # released: stage ii keeps the global term (k1 = 1)
            z_s = self.predictors["global"](self.net.global_head(enc[-1][n_lb:]))
            z_t = self.teacher.global_head(t_enc[-1]).float().detach()
            glob = self._distil(z_t, z_s, self.global_bank)
            unsup = unsup + self.cfg.w_global_stage2 * glob
            terms[f"global_{kind}"] = glob.detach()
        return StepOutput(loss=sup + unsup, unsup=unsup, terms=terms)

    def _stage_finetune(self, batch):
        sup = self.supervised_loss(self.net.backbone(batch.x_lb), batch.y_lb)
        return StepOutput(loss=sup, terms={"sup": sup.detach()})

    @torch.no_grad()
    def teacher_probs(self, x_t: torch.Tensor) -> torch.Tensor:
        """The teacher's softmax on its view: pseudo-labels and confidences of stage iii."""
        if not self.cfg.teacher_eval:
            return self.teacher.backbone(x_t).float().softmax(1)
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            return self.teacher.backbone(x_t).float().softmax(1)
        finally:
            self.teacher.train(was_training)

    def mixed(self, x_s: torch.Tensor, t_probs: torch.Tensor):
        """(student view, teacher probabilities), both mixed with the next image by the same masks."""
        if self.cfg.mix == "none":
            return x_s, t_probs
        masks = mix_masks(self.cfg.mix, t_probs.argmax(1), self.ctx.generator, t_probs.shape[1])
        return mix_with_next(x_s, masks), mix_with_next(t_probs, masks)

    def _stage_anco(self, batch):
        cfg = self.cfg
        n_lb = batch.x_lb.shape[0]
        x_s, x_t = self._aligned_views(batch)
        if not self.use_unsup:
            logits = self.net.backbone(torch.cat([batch.x_lb, x_s]))
            sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
            return StepOutput(loss=sup, terms={"sup": sup.detach()})
        if cfg.strong_view == "released":  # mix the weak view, then perturb it as the release does
            x_s, t_probs = self.mixed(batch.x_ulb, self.teacher_probs(x_t))
            x_s = release_perturbation(x_s, self.ctx.generator)
        else:
            x_s, t_probs = self.mixed(x_s, self.teacher_probs(x_t))
        x = torch.cat([batch.x_lb, x_s])
        logits, enc, dec = self.net.backbone.forward_features(x)
        sup = self.supervised_loss(logits[:n_lb], batch.y_lb)
        terms = {"sup": sup.detach(),
                 "confident": (t_probs.max(1).values > cfg.theta_s).float().mean()}
        unsup = torch.zeros((), device=x.device)
        if self.use_pseudo_ce:
            ce_u, _ = PSEUDO_CE[cfg.pseudo_ce](logits[n_lb:], t_probs, cfg.theta_s)
            unsup = unsup + cfg.w_unsup_ce * ce_u
            terms["pseudo_ce"] = ce_u.detach()
        if self.use_anco:
            anco = self._anco(x, logits, [enc[-1], *dec], batch.y_lb, t_probs)
            unsup = unsup + cfg.w_anco * anco.loss
            terms.update(anco=anco.loss.detach(), anco_classes=len(anco.classes),
                         anco_hard=anco.n_hard)
        return StepOutput(loss=sup + unsup, unsup=unsup, terms=terms)

    def _anco(self, x, logits, levels, y_lb, t_probs):
        cfg = self.cfg
        spatial = tuple(x.shape[2:])  # (H, W) or (Z, Y, X)
        conf, pseudo = t_probs.max(1)
        labels = torch.cat([y_lb.long(), pseudo])
        valid = torch.cat([torch.ones_like(y_lb, dtype=torch.bool), conf > cfg.anco_valid_threshold])

        def embed_at(flat):  # flat indices into (B, *spatial) -> (b, coordinates), last axis fastest
            coords, rest = [], flat
            for n in reversed(spatial):
                coords.append(rest % n)
                rest = rest // n
            return self.rep_head.at_points(levels, rest, tuple(reversed(coords)), spatial)

        return sampled_anco(embed_at, labels, valid, logits.detach().float().softmax(1), cfg.theta_s,
                            cfg.tau_an, cfg.num_queries, cfg.num_negatives, cfg.prototype_pixels,
                            self.ctx.generator, form=cfg.anco_form, key_grad=cfg.anco_key_grad)
