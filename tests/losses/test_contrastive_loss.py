"""C2-Matching's contrastive correspondence losses: hand-computed values, a brute-force reference of the
hardest-negative triplet loss, and the distillation KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.losses import (
    CorrespondenceContrastiveLoss,
    CorrespondenceDistillationLoss,
    correspondence_contrastive_loss,
    correspondence_distillation_loss,
)

# Two input and two reference descriptors, as (N=1, C=2, h=1, w=2) maps; pixel (x, 0) is feature (0, x).
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)  # a0 = (1, 0), a1 = (0, 1)
B = torch.tensor([[0.6, 0.8], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)  # b0 = (0.6, 0.8), b1 = (0, 1)
IDENTITY = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]])  # a_i matches b_i
SWAPPED = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # a0 -> b1, a1 -> b0
EVERYTHING = dict(border=-0.5, min_matches=1, stride=1)  # every position valid, feature = pixel


@pytest.mark.parametrize("coords, expected", [(IDENTITY, 1.0), (SWAPPED, 2.2)])
def test_triplet_loss_by_hand(coords: torch.Tensor, expected: float) -> None:
    # d(u, v) = 2 - 2u·v. Identity: i=0: pos d(a0,b0) = 0.8, negatives d(a0,b1) = 2 and d(b0,a1) = 0.4 ->
    # 1 + 0.8 - 0.4 = 1.4; i=1: pos 0, negatives d(a1,b0) = 0.4, d(b1,a0) = 2 -> 0.6; mean 1.0.
    # Swapped: i=0: pos d(a0,b1) = 2, negatives d(a0,b0) = 0.8, d(b1,a1) = 0 -> 3; i=1: pos d(a1,b0) = 0.4,
    # negatives d(a1,b1) = 0, d(b0,a0) = 0.8 -> 1.4; mean 2.2.
    loss = correspondence_contrastive_loss(A, B, coords, margin=1.0, safe_radius=0, **EVERYTHING)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Descriptors are normalised: scaling the features changes nothing.
    assert correspondence_contrastive_loss(3 * A, 0.5 * B, coords, safe_radius=0, **EVERYTHING).item() == \
        pytest.approx(expected, rel=1e-6)
    module = CorrespondenceContrastiveLoss(margin=1.0, safe_radius=0, **EVERYTHING)
    assert module(A, B, coords).item() == pytest.approx(expected, rel=1e-6)


def test_safe_radius_and_border_exclude_by_hand() -> None:
    # With a safe radius of 1 every negative is excluded (+10): relu(1 + pos - (d + 10)) = 0.
    assert correspondence_contrastive_loss(A, B, IDENTITY, safe_radius=1, **EVERYTHING).item() == 0
    # A border of 0.5 drops x = 0 (it needs 0.5 < x < 1.5 in a 2-pixel-wide reference). The reference gets
    # three rows, matches on the middle one. One valid position, i=1; its only negative left is a0 (input
    # side): relu(margin + d(a1,b1) - d(b1,a0)) = relu(margin + 0 - 2): 0 with margin 1, 1 with margin 3.
    tall = torch.zeros(1, 2, 3, 2)
    tall[:, :, 1] = B[:, :, 0]
    middle = IDENTITY + torch.tensor([0.0, 1.0])
    options = dict(safe_radius=0, border=0.5, stride=1)
    assert correspondence_contrastive_loss(A, tall, middle, min_matches=1, **options).item() == 0
    assert correspondence_contrastive_loss(A, tall, middle, margin=3.0, min_matches=1, **options).item() == \
        pytest.approx(1.0)
    with pytest.raises(RefsrError, match="no sample in the batch has 2 valid"):
        correspondence_contrastive_loss(A, tall, middle, min_matches=2, **options)
    nan = IDENTITY.clone()
    nan[0, 0, 0, 0] = float("nan")  # "no match"
    assert correspondence_contrastive_loss(A, B, nan, margin=3.0, safe_radius=0, **EVERYTHING).item() == \
        pytest.approx(1.0)


def _reference_triplet(fa, fb, coords, *, stride, margin, safe_radius, border, min_matches):
    """The loss written out position by position, straight from its definition."""
    per_sample = []
    for k in range(fa.shape[0]):
        a_map, b_map = F.normalize(fa[k], dim=0), F.normalize(fb[k], dim=0)
        h, w = a_map.shape[1:]
        hb, wb = b_map.shape[1:]
        valid = []
        for r in range(h):
            for c in range(w):
                x, y = coords[k, stride * r, stride * c].tolist()
                if border < x < wb * stride - border and border < y < hb * stride - border:
                    valid.append(((r, c), (round(y / stride), round(x / stride))))
        if len(valid) < min_matches:
            continue
        terms = []
        for p, m in valid:
            a, b = a_map[:, p[0], p[1]], b_map[:, m[0], m[1]]
            positive = 2 - 2 * a.dot(b)
            negatives = [2 - 2 * a.dot(b_map[:, m2[0], m2[1]]) for _, m2 in valid
                         if max(abs(m2[0] - m[0]), abs(m2[1] - m[1])) > safe_radius]
            negatives += [2 - 2 * b.dot(a_map[:, r, c]) for r in range(h) for c in range(w)
                          if max(abs(r - p[0]), abs(c - p[1])) > safe_radius]
            terms.append(torch.relu(margin + positive - min(negatives)))
        per_sample.append(torch.stack(terms).mean())
    return torch.stack(per_sample).mean()


def test_triplet_loss_matches_a_brute_force_reference_at_stride_4() -> None:
    gen = torch.Generator().manual_seed(3)
    fa = torch.randn(2, 5, 6, 7, generator=gen, requires_grad=True)
    fb = torch.randn(2, 5, 6, 7, generator=gen)
    # Pixel-level matches: a shift with a little noise, some falling off the reference (invalid).
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(28.0), indexing="ij")
    coords = torch.stack([xs + 3.3, ys - 2.6], dim=-1).expand(2, 24, 28, 2).clone()
    coords += torch.randn(coords.shape, generator=gen) * 1.5
    options = dict(margin=0.7, safe_radius=1, border=2.0, min_matches=4)
    ours = correspondence_contrastive_loss(fa, fb, coords, **options)
    expected = _reference_triplet(fa.detach(), fb, coords, stride=4, **options)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert fa.grad.abs().max() > 0


def test_distillation_by_hand() -> None:
    # Teacher: a_i = b_i = e_i: cosines [[1, 0], [0, 1]]; student: A, B above: [[0.6, 0], [0.8, 1]]. T = 1.
    teacher_a = teacher_b = torch.eye(2).reshape(1, 2, 1, 2)
    student_a, student_b = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
    t = [[math.e / (math.e + 1), 1 / (math.e + 1)], [1 / (math.e + 1), math.e / (math.e + 1)]]
    s_logits = [[0.6, 0.0], [0.8, 1.0]]
    expected = 0.0
    for i in range(2):
        norm = math.log(sum(math.exp(v) for v in s_logits[i]))
        expected += sum(t[i][j] * (math.log(t[i][j]) - (s_logits[i][j] - norm)) for j in range(2))
    expected /= 2  # batchmean: per input position
    loss = correspondence_distillation_loss(student_a, student_b, teacher_a, teacher_b, IDENTITY, temperature=1.0,
                                            **EVERYTHING)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert student_a.grad.abs().max() > 0 and student_b.grad.abs().max() > 0
    # A student equal to its teacher has nothing to learn, at any temperature.
    same = correspondence_distillation_loss(A, B, A, B, SWAPPED, temperature=0.15, **EVERYTHING)
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    module = CorrespondenceDistillationLoss(temperature=1.0, **EVERYTHING)
    assert module(A, B, teacher_a, teacher_b, IDENTITY).item() == pytest.approx(expected, rel=1e-5)


def test_distillation_temperature_sharpens_the_distributions() -> None:
    # Computed the long way: KL over softmax(cos / T) of every valid pair.
    gen = torch.Generator().manual_seed(5)
    sa, sb, ta, tb = (torch.randn(1, 4, 3, 3, generator=gen) for _ in range(4))
    coords = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="xy"), dim=-1)[None]
    for temperature in (0.15, 1.0):
        def cos(a, b):
            return F.normalize(a[0].reshape(4, -1), dim=0).t() @ F.normalize(b[0].reshape(4, -1), dim=0)

        log_s = torch.log_softmax(cos(sa, sb) / temperature, dim=1)
        t = torch.softmax(cos(ta, tb) / temperature, dim=1)
        expected = (t * (t.log() - log_s)).sum() / 9
        ours = correspondence_distillation_loss(sa, sb, ta, tb, coords, temperature=temperature, **EVERYTHING)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(RefsrError, match="correspondences of shape"):
        correspondence_contrastive_loss(A, B, IDENTITY[0], **EVERYTHING)
    with pytest.raises(RefsrError, match="teacher's features"):
        correspondence_distillation_loss(A, B, A[..., :1], B, IDENTITY, **EVERYTHING)
    with pytest.raises(RefsrError, match="does not cover"):
        correspondence_contrastive_loss(A, B, IDENTITY[:, :, :1], border=-0.5, min_matches=1, stride=1)
