"""The contract every registered method honours, checked for every stage of every method."""
import math

import pytest

from ssl_bench.registry import list_methods
from ssl_bench.testing import run_contract


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    for rep in run_contract(name):
        stage = rep["stage"]
        assert math.isfinite(rep["loss"]), f"{name}/{stage}: loss {rep['loss']}"
        assert not rep["missing"], f"{name}/{stage}: no gradient for {rep['missing'][:5]}"
        if rep["out"].unsup is not None:
            assert rep["unsup_grad"] > 0, f"{name}/{stage}: unsupervised term gives no gradient"
        assert not rep["teacher_grads"], f"{name}/{stage}: teacher has gradients: {rep['teacher_grads'][:3]}"
        for teacher, ok in rep["ema_ok"].items():
            assert ok, f"{name}/{stage}: teacher {teacher} did not move by EMA"


@pytest.mark.parametrize("name", list_methods())
def test_semi_supervised_methods_have_an_unlabeled_term(name):
    """A method that takes unlabeled data must return a differentiable unlabeled term in some
    stage: a semi-supervised method that quietly trains on labels alone is a defect."""
    from ssl_bench.registry import get_method_class

    reports = run_contract(name)
    has_unsup = any(rep["out"].unsup is not None and rep["unsup_grad"] > 0 for rep in reports)
    assert has_unsup != get_method_class(name).supervised_only, name
