"""GCE against its formula and its gradient form, with golden numbers worked out by hand.

Case: logits z = (0, ln 3), target y = 1, so softmax p = (1/4, 3/4) and p_y = 0.75; q = 0.7.
    p_y^q              = exp(0.7 · ln 0.75)          = 0.8176037681770133
    GCE = (1 − p_y^q)/q                              = 0.2605660454614096
    gradient form CE · p_y^q · q = −ln(0.75)·0.81760·0.7 = 0.16464696253148403
    ∂CE/∂z = p − e_y = (0.25, −0.25)
    ∂GCE/∂z = p_y^q (p − e_y)                        = (0.20440094204425333, −0.20440094204425333)
    ∂(gradient form)/∂z = q · p_y^q (p − e_y)        = (0.1430806594309773, −0.1430806594309773)
"""

import math

import pytest
import torch
import torch.nn.functional as F

from diffinject.errors import DiffinjectError
from diffinject.models.losses import gce_formula, gce_loss, per_sample_loss, true_class_prob

Q = 0.7


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    return logits, torch.tensor([1])


def test_true_class_probability():
    logits, target = _case()
    assert true_class_prob(logits, target).item() == pytest.approx(0.75, abs=1e-12)


def test_gce_formula_golden_value_and_gradient():
    logits, target = _case()
    loss = gce_formula(logits, target, Q)
    assert loss.item() == pytest.approx(0.2605660454614096, abs=1e-12)
    loss.sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([0.20440094204425333, -0.20440094204425333], abs=1e-12)


def test_gce_gradient_form_golden_value_and_gradient():
    logits, target = _case()
    loss = gce_loss(logits, target, Q)
    assert loss.item() == pytest.approx(0.16464696253148403, abs=1e-12)
    loss.sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([0.1430806594309773, -0.1430806594309773], abs=1e-12)


def test_gradient_form_is_q_times_the_formula_gradient_on_random_logits():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 10, (16,))
    (grad_formula,) = torch.autograd.grad(gce_formula(logits, targets, Q).sum(), logits)
    (grad_form,) = torch.autograd.grad(gce_loss(logits, targets, Q).sum(), logits)
    torch.testing.assert_close(grad_form, Q * grad_formula)


def test_gce_tends_to_ce_as_q_tends_to_zero():
    torch.manual_seed(1)
    logits, targets = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    ce = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(gce_formula(logits, targets, 1e-7), ce, rtol=1e-5, atol=1e-6)


def test_per_sample_loss_names():
    logits, target = _case()
    assert per_sample_loss("ce", logits, target).item() == pytest.approx(-math.log(0.75))
    assert per_sample_loss("gce", logits, target, Q).item() == pytest.approx(0.16464696253148403)
    with pytest.raises(DiffinjectError, match="loss 'mse': expected one of ce, gce"):
        per_sample_loss("mse", logits, target)
