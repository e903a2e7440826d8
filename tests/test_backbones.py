"""Backbones: the field's U-Net and segmentation-models-pytorch models behind one interface."""
import pytest
import torch

from ssl_bench.nets import create_backbone
from ssl_bench.testing import run_contract


def test_unet_has_the_fields_size_and_interface():
    net = create_backbone("unet", 1, 4)
    assert sum(p.numel() for p in net.parameters()) == 1_944_324  # the field's 1.94 M parameters
    x = torch.randn(2, 1, 32, 32)
    logits, enc, dec = net.forward_features(x)
    assert logits.shape == (2, 4, 32, 32)
    assert [f.shape[1] for f in enc] == [16, 32, 64, 128, 256]
    assert [f.shape[1] for f in dec] == [128, 64, 32, 16]
    aux = net.new_decoder()
    assert aux(enc)[0].shape == logits.shape


def test_smp_backbone_random_init_and_interface():
    net = create_backbone("smp:Unet:resnet18", 1, 3)
    x = torch.randn(2, 1, 64, 64)
    logits, enc, dec = net.forward_features(x)
    assert logits.shape == (2, 3, 64, 64) and torch.allclose(net(x), logits)
    twin = net.new_decoder()
    out, _ = twin(enc)
    assert out.shape == logits.shape and not torch.allclose(out, logits)


def test_unknown_backbone_names_the_fix():
    with pytest.raises(ValueError, match="smp:<Arch>:<encoder>"):
        create_backbone("resnet")
    with pytest.raises(ValueError, match="unknown segmentation-models-pytorch backbone"):
        create_backbone("smp:NoSuchArch:resnet18")


def test_methods_run_on_an_smp_backbone(monkeypatch):
    from ssl_bench.methods import base

    monkeypatch.setattr(base.MethodContext, "backbone", "smp:Unet:resnet18", raising=False)
    original = base.MethodContext.__init__

    def with_smp(self, *a, **k):
        original(self, *a, **k)
        self.backbone = "smp:Unet:resnet18"

    monkeypatch.setattr(base.MethodContext, "__init__", with_smp)
    for name in ("mt", "cps"):
        for rep in run_contract(name):
            assert not rep["missing"] and rep["unsup_grad"] > 0, name
