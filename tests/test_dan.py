"""DAN: both adversarial losses against hand values; the segmenter and the discriminator step on
separate optimisers in the loop's order without touching each other's parameters."""
import math

import torch

from ssl_bench.methods.dan import adversarial_loss, discriminator_loss
from ssl_bench.testing import tiny_setup


def test_losses_hand_values():
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4
    adv = adversarial_loss(torch.tensor([0.0, math.log(3.0)]))
    assert abs(float(adv) - (math.log(2) + math.log(4 / 3)) / 2) < 1e-6
    d = discriminator_loss(torch.tensor([0.0]), torch.tensor([math.log(3.0)]))
    # labeled scored 1/2 against 1: ln 2; unlabeled scored 3/4 against 0: -ln(1/4)
    assert abs(float(d) - (math.log(2) + math.log(4)) / 2) < 1e-6


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _same(a, module):
    return all(torch.equal(x, p) for x, p in zip(a, module.parameters()))


def test_discriminator_is_auxiliary_and_the_loop_order_keeps_updates_apart():
    method, batch = tiny_setup("dan")
    d_params = {id(p) for p in method.discriminator.parameters()}
    assert not d_params & {id(p) for p in method.trainable_parameters()}
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9)
    aux = method.make_aux_optimizer("discriminator", method.aux_parameters()["discriminator"])
    assert isinstance(aux, torch.optim.Adam)

    s0, d0 = _snapshot(method.student), _snapshot(method.discriminator)
    out = method.training_step(batch, 5)
    # main: backward into everything reachable, step only the segmenter
    opt.zero_grad(set_to_none=True)
    out.loss.backward(retain_graph=True)
    assert any(p.grad is not None for p in method.discriminator.parameters())  # adversarial path
    opt.step()
    assert not _same(s0, method.student) and _same(d0, method.discriminator)
    s1 = _snapshot(method.student)
    s_grads = [p.grad.clone() for p in method.student.parameters()]
    # auxiliary: zero D's grads, backward the detached discriminator loss, step D
    aux.zero_grad(set_to_none=True)
    out.aux_losses["discriminator"].backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(s_grads, method.student.parameters()))
    aux.step()
    assert not _same(d0, method.discriminator) and _same(s1, method.student)


def test_discriminator_learns_to_separate_and_segmenter_is_pushed_to_fool_it():
    torch.manual_seed(0)
    method, batch = tiny_setup("dan", {"disc_lr": 1e-3})
    aux = method.make_aux_optimizer("discriminator", method.aux_parameters()["discriminator"])
    first = None
    for _ in range(15):
        out = method.training_step(batch, 5)
        aux.zero_grad(set_to_none=True)
        out.aux_losses["discriminator"].backward()
        aux.step()
        first = first if first is not None else out.terms["discriminator"]
    out = method.training_step(batch, 5)
    assert out.terms["discriminator"] < first
    # once D separates, the segmenter's adversarial term (unlabeled called "annotated") is high
    assert out.terms["adversarial"] > math.log(2)
