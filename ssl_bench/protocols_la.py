"""The Left Atrium protocols: ``la-field`` (each published row's own recipe) and ``la-clean``.

Facts read in the reference repositories (``shared/reference/anchors-2026-12.md`` §2.2; UA-MT's
``code/train_LA.py`` and ``code/train_LA_meanteacher_certainty_unlabel.py``, yulequan/UA-MT; MC-Net's
``train_mcnet_3d.py``; BCP's ``LA_BCP_train.py``; ACTION's ``train_3D_action.py``), expressed as
``--set`` keys on a base budget of 6000 iterations (UA-MT's), so that a CPU preset that shortens the
base budget keeps every row's proportions:

* the UA-MT line (V-Net-L/F, MT, UA-MT): 6000 iterations, batch 4 with 2 labeled patches (the
  supervised script: 4 labeled), SGD lr 0.01 x 0.1 every 2500 iterations, consistency 0.1 x
  sigmoid_rampup(iter // 150, 40) (length = the budget, quantum 150 / 6000), no validation, the
  last checkpoint (``iter_6000.pth``) tested, no post-processing;
* MC-Net(+): 15000 iterations (x 2.5) at constant lr 0.01, consistency ramp sigmoid(iter // 150, 40)
  (40 % of its budget), the best of the checkpoints scored **on the 20 test scans** every 200
  iterations, no LCC;
* BCP: batch 8 with 4 labeled, 2000 pre-training + 15000 self-training (x 17 / 6), lr x 0.1 every
  2500, best **on the test scans**, LCC on;
* ACTION: batch 2 with 1 labeled, 30000 iterations per stage (3 stages: x 15), the checkpoint of a
  chosen iteration (taken here as the last); variant ``released`` with the 3D scripts' own values
  (``code/train_3D.sh``, ``train_3D_pretrain.py``, ``train_3D_action.py``, ``model_3D.py``):
  teacher temperature T_t 0.6 (``--T_t 0.6``; the 2D release's is 0.01), 128-d heads
  (``--latent_feature_size 128``, ``RepresentationHead_3d(output_channel=128)``) and ClassMix
  (``--apply_aug``'s default, which train_3D.sh leaves; the 2D script passes cutmix).

``la-clean`` trains every row with the same recipe as ``la-field`` but selects the checkpoint on the
validation split carved out of the 80 training scans (``datasets/la.py``) and never looks at the
test scans before testing; LCC is off for every row. The difference between the two is a result
of its own (TraCoCo reports +0.57 Dice from test-set selection on LA).
"""
from __future__ import annotations

from ssl_bench.protocols import Protocol, Recipe

UAMT_SRC = "UA-MT (yulequan/UA-MT) code/train_LA_meanteacher_certainty_unlabel.py"
#: UA-MT's schedule on its 6000 iterations
LA_TRAIN = {"iterations": "6000", "labeled_bs": "2", "unlabeled_bs": "2", "lr": "0.01",
            "lr_step": str(2500 / 6000), "rampup.length": "1.0", "rampup.quantum": str(150 / 6000),
            "val_every": "200"}
FIELD_LAST = {"validation": "none"}
ON_TEST = {"validation": "test"}

_FIELD_ROWS = {
    "unet-l": Recipe({**FIELD_LAST, "supervised_whole_batch": "true"}, checkpoint="last",
                     source="UA-MT code/train_LA.py: 4 labeled patches per step, 6000 iterations, last checkpoint"),
    "unet-f": Recipe({**FIELD_LAST, "supervised_whole_batch": "true"}, checkpoint="last",
                     source="UA-MT code/train_LA.py on all 80 scans"),
    "mt": Recipe({**FIELD_LAST, "method.variant": "ssl4mis"}, checkpoint="last",
                 source=f"{UAMT_SRC} without the uncertainty mask (teacher on a noisy copy)"),
    "uamt": Recipe({**FIELD_LAST, "method.variant": "ln2"}, checkpoint="last", source=UAMT_SRC),
    "mcnet": Recipe({**ON_TEST, "lr_step": "0", "poly_power": "0", "rampup.length": "0.4",
                     "rampup.quantum": str(150 / 15000)}, budget_scale=2.5,
                    source="MC-Net train_mcnet_3d.py: 15000 iterations, constant lr, best on test.list"),
    "bcp": Recipe({**ON_TEST, "labeled_bs": "4", "unlabeled_bs": "4", "lcc": "true",
                   "lr_step": str(2500 / 15000), "method.pretrain_fraction": str(2000 / 17000)},
                  budget_scale=17000 / 6000,
                  source="BCP LA_BCP_train.py: 8/4, 2000 + 15000 iterations, best on test.list, LCC"),
    "action": Recipe({**FIELD_LAST, "labeled_bs": "1", "unlabeled_bs": "1", "method.variant": "released",
                      "method.tau_t": "0.6", "method.proj_dim": "128", "method.mix": "classmix"},
                     budget_scale=15.0, checkpoint="last",
                     source="ACTION (charlesyou999648/ACTION) code/train_3D.sh, train_3D_pretrain.py, "
                            "train_3D_action.py: 1 + 1 patches, 30000 per stage, T_t 0.6, 128-d heads, ClassMix; "
                            "a chosen iteration (here: the last)"),
}

LA_FIELD = Protocol(
    name="la-field", version=1,
    summary="Left Atrium: each published row's own recipe, including its selection on the test scans",
    budget_rule="UA-MT line (V-Net-L/F, MT, UA-MT): 6000 iterations at 2 + 2 patches of 112x112x80, lr 0.01 x0.1 "
                "every 2500, last checkpoint; MC-Net 15000 at constant lr and BCP 2000 + 15000 at 4 + 4 with LCC, "
                "both selecting the best checkpoint ON THE TEST SCANS (as published: optimistic); ACTION 30000 per "
                "stage at 1 + 1, last",
    train=LA_TRAIN,
    default=Recipe(FIELD_LAST, checkpoint="last", source="UA-MT's schedule (no LA recipe of its own)"),
    methods=_FIELD_ROWS,
)

LA_CLEAN = Protocol(
    name="la-clean", version=1,
    summary="Left Atrium: the rows' recipes, checkpoints selected on a validation split carved from the 80 "
            "training scans, never on test",
    budget_rule="as la-field, but every row selects its checkpoint on the 8 validation scans carved out of the "
                "80 training scans (persisted; they are not trained on), no LCC; the last checkpoint is "
                "recorded beside it",
    train={**LA_TRAIN, "validation": "split"},
    default=Recipe(source="UA-MT's schedule, validation split"),
    methods={name: Recipe({k: v for k, v in r.overrides.items() if k not in ("validation", "lcc")},
                          r.budget_scale, "best", r.source + "; selection moved to the validation split")
             for name, r in _FIELD_ROWS.items()},
)

LA_PROTOCOLS = (LA_FIELD, LA_CLEAN)
#: datasets these protocols are written for
LA_DATASETS = ("la", "la-small")
