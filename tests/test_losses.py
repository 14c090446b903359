"""DistillationLoss against references written from the formulas (values and analytic gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy

from timm_deit_distill.losses import DistillationLoss

B, C = 6, 5


# ---- independent references: plain math on float64, gradients derived by hand ------------------------------

def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    shifted = z - z.max(dim=1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def _softmax(z: torch.Tensor) -> torch.Tensor:
    return _log_softmax(z).exp()


def _onehot(index: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.eye(classes, dtype=torch.float64)[index]


def reference(cls, dist, teacher, labels, kind, alpha, tau, reduction):
    """(loss, d loss / d cls, d loss / d dist) from the textbook formulas."""
    b, c = cls.shape
    targets = labels if labels.is_floating_point() else _onehot(labels, c)
    # Cross-entropy with (possibly soft) targets: mean over the batch of -sum_k y_k log softmax(cls)_k.
    base = -(targets * _log_softmax(cls)).sum() / b
    d_cls_base = (_softmax(cls) - targets) / b
    if kind == "none":
        return base, d_cls_base, torch.zeros_like(dist)
    if kind == "hard":
        hard = _onehot(teacher.argmax(dim=1), c)
        distill = -(hard * _log_softmax(dist)).sum() / b
        d_dist = (_softmax(dist) - hard) / b
    else:
        p = _softmax(teacher / tau)
        kl = (p * (p.log() - _log_softmax(dist / tau))).sum()
        divisor = b * c if reduction == "deit" else b
        distill = kl * tau * tau / divisor
        # d/d dist of tau^2 * KL(p || softmax(dist / tau)) = tau * (softmax(dist / tau) - p)
        d_dist = tau * (_softmax(dist / tau) - p) / divisor
    loss = (1 - alpha) * base + alpha * distill
    return loss, (1 - alpha) * d_cls_base, alpha * d_dist


def _batch(seed: int = 0, soft_labels: bool = False):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    dist = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    if soft_labels:  # Mixup-style: a convex mix of two one-hot labels
        lam = 0.7
        a, b = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
        labels = lam * _onehot(a, C) + (1 - lam) * _onehot(b, C)
    else:
        labels = torch.randint(0, C, (B,), generator=g)
    return cls, dist, teacher, labels


@pytest.mark.parametrize("soft_labels", [False, True], ids=["hard-labels", "soft-labels"])
@pytest.mark.parametrize(("kind", "reduction"), [
    ("none", "deit"), ("hard", "deit"), ("soft", "deit"), ("soft", "batchmean")])
@pytest.mark.parametrize(("alpha", "tau"), [(0.5, 1.0), (0.3, 3.0), (1.0, 0.5), (0.0, 2.0)])
def test_matches_formula_with_gradients(kind, reduction, alpha, tau, soft_labels):
    cls, dist, teacher, labels = _batch(soft_labels=soft_labels)
    criterion = SoftTargetCrossEntropy() if soft_labels else nn.CrossEntropyLoss()
    loss_fn = DistillationLoss(criterion, None, kind, alpha, tau, soft_reduction=reduction)
    cls_p, dist_p = cls.clone().requires_grad_(), dist.clone().requires_grad_()
    loss = loss_fn.from_teacher_output((cls_p, dist_p), labels, teacher)
    loss.backward()
    ref_loss, ref_d_cls, ref_d_dist = reference(cls, dist, teacher, labels, kind, alpha, tau, reduction)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cls_p.grad, ref_d_cls, rtol=1e-10, atol=1e-12)
    if kind == "none":
        assert dist_p.grad is None  # the distillation head gets no signal without a teacher
    else:
        torch.testing.assert_close(dist_p.grad, ref_d_dist, rtol=1e-10, atol=1e-12)


def test_soft_reductions_differ_by_the_class_count():
    cls, dist, teacher, labels = _batch(seed=3)
    parts = {}
    for reduction in ("deit", "batchmean"):
        loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.5, 2.0, soft_reduction=reduction)
        loss_fn.from_teacher_output((cls, dist), labels, teacher)
        parts[reduction] = loss_fn.last_distill_loss
    torch.testing.assert_close(parts["batchmean"], parts["deit"] * C, rtol=1e-12, atol=0)


def test_fp32_matches_float64_reference():
    cls, dist, teacher, labels = _batch(seed=1)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.5, 1.0)
    loss = loss_fn.from_teacher_output((cls.float(), dist.float()), labels, teacher.float())
    ref, _, _ = reference(cls, dist, teacher, labels, "soft", 0.5, 1.0, "deit")
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-6)


def test_last_parts_are_detached_and_unweighted():
    cls, dist, teacher, labels = _batch(seed=2)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.25, 1.0)
    loss = loss_fn.from_teacher_output((cls.requires_grad_(), dist.requires_grad_()), labels, teacher)
    assert not loss_fn.last_base_loss.requires_grad and not loss_fn.last_distill_loss.requires_grad
    torch.testing.assert_close(loss.detach(), 0.75 * loss_fn.last_base_loss + 0.25 * loss_fn.last_distill_loss)
    ref_none = DistillationLoss(nn.CrossEntropyLoss(), None, "none", 0.25, 1.0)
    ref_none.from_teacher_output((cls, dist), labels, None)
    assert ref_none.last_distill_loss.item() == 0.0
    torch.testing.assert_close(ref_none.last_base_loss, loss_fn.last_base_loss)


def test_hard_mode_accepts_class_indices_and_low_precision_logits():
    cls, dist, teacher, labels = _batch(seed=4)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0)
    from_logits = loss_fn.from_teacher_output((cls, dist), labels, teacher)
    from_indices = loss_fn.from_teacher_output((cls, dist), labels, teacher.argmax(1))
    assert torch.equal(from_logits, from_indices)
    soft = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.5, 1.0)
    fp16 = soft.from_teacher_output((cls.float(), dist.float()), labels, teacher.half())  # cache replay
    ref, _, _ = reference(cls.float().double(), dist.float().double(), teacher.half().double(), labels,
                          "soft", 0.5, 1.0, "deit")
    assert math.isclose(fp16.item(), ref.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="hard"):
        soft.from_teacher_output((cls, dist), labels, teacher.argmax(1))


def test_deit_engine_call_runs_the_teacher_without_gradients_on_the_same_inputs():
    torch.manual_seed(0)
    teacher = nn.Linear(8, C).double()
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((i[0], torch.is_grad_enabled())))
    inputs = torch.randn(B, 8, dtype=torch.float64)
    cls, dist, _, labels = _batch(seed=5)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", 0.5, 2.0)
    loss = loss_fn(inputs, (cls.requires_grad_(), dist.requires_grad_()), labels)
    loss.backward()
    assert len(seen) == 1 and seen[0][0] is inputs and seen[0][1] is False
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():
        ref, _, _ = reference(cls, dist, teacher(inputs), labels, "soft", 0.5, 2.0, "deit")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-12, atol=1e-12)
    # 'none' never runs the teacher and uses only the class head.
    seen.clear()
    none = DistillationLoss(nn.CrossEntropyLoss(), teacher, "none", 0.5, 2.0)
    torch.testing.assert_close(none(inputs, (cls, dist), labels), nn.functional.cross_entropy(cls, labels))
    assert not seen


def test_two_argument_call_reads_teacher_logits_from_the_output():
    from timm_deit_distill.task import DistilledOutput

    cls, dist, teacher, labels = _batch(seed=6)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0)
    two = loss_fn(DistilledOutput(cls, dist, teacher), labels)
    assert torch.equal(two, loss_fn.from_teacher_output((cls, dist), labels, teacher))
    plain = DistillationLoss(nn.CrossEntropyLoss(), None, "none", 0.5, 1.0)
    torch.testing.assert_close(plain(cls, labels), nn.functional.cross_entropy(cls, labels))


@pytest.mark.parametrize(("args", "match"), [
    (("hard_soft", 0.5, 1.0), "distillation_type"),
    (("soft", 1.5, 1.0), "alpha"),
    (("soft", -0.1, 1.0), "alpha"),
    (("soft", float("nan"), 1.0), "alpha"),
    (("soft", 0.5, 0.0), "tau"),
    (("soft", 0.5, -1.0), "tau"),
])
def test_bad_settings_fail_at_construction(args, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(nn.CrossEntropyLoss(), None, *args)
    with pytest.raises(ValueError, match="soft_reduction"):
        DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.5, 1.0, soft_reduction="mean")


def test_plain_tensor_outputs_name_the_fix():
    cls, _, teacher, labels = _batch(seed=7)
    for kind in ("soft", "hard"):
        loss_fn = DistillationLoss(nn.CrossEntropyLoss(), nn.Identity(), kind, 0.5, 1.0)
        with pytest.raises(ValueError, match="_distilled_"):
            loss_fn(teacher, cls, labels)
        with pytest.raises(ValueError, match="_distilled_"):
            loss_fn(cls, labels)
        with pytest.raises(ValueError, match="_distilled_"):
            loss_fn.from_teacher_output(cls, labels, teacher)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0)
    with pytest.raises(ValueError, match="DistilledStudent"):
        loss_fn((cls, cls), labels)  # a (cls, dist) pair without the teacher's logits
    with pytest.raises(ValueError, match="teacher_model=None"):
        loss_fn(teacher, (cls, cls), labels)


def test_no_gradient_reaches_a_teacher_output_passed_in():
    cls, dist, teacher, labels = _batch(seed=8)
    teacher = teacher.clone().requires_grad_()
    for kind in ("soft", "hard"):
        loss = DistillationLoss(nn.CrossEntropyLoss(), None, kind, 0.5, 2.0).from_teacher_output(
            (cls.clone().requires_grad_(), dist.clone().requires_grad_()), labels, teacher)
        loss.backward()
        assert teacher.grad is None
