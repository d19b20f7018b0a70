"""C2-Matching's losses for its contrastive correspondence network (the feature extractor AMSA reuses).

C2-Matching (Jiang et al., CVPR 2021; official code ``yumingj/C2-Matching``, ``teacher_contras_model.py`` and
``student_contras_distillation_model.py``) trains its two-branch VGG16 extractor in two stages on image pairs
with a known dense correspondence (an image and a random homography of it):

- **Teacher** (stage 1, both images HR): a triplet margin loss on L2-normalised descriptors with the
  *hardest* negative (D2-Net's form). For every input position ``i`` whose true match ``m(i)`` in the
  reference lies inside it (away from the border), with distances ``d(u, v) = 2 - 2 u·v = ‖u - v‖²``:

  ``positive_i = d(a_i, b_m(i))``;
  ``negative_i = min( min_{j: ‖m(j) - m(i)‖∞ > r} d(a_i, b_m(j)),  min_{k: ‖k - i‖∞ > r} d(b_m(i), a_k) )``
  (the first over the reference descriptors at the *other* valid matches, the second over *all* input
  positions); ``loss = mean_i relu(margin + positive_i - negative_i)``, averaged over the samples that have at
  least ``min_matches`` valid positions. Official values: ``margin = 1``, safe radius ``r = 4`` feature pixels.
- **Student** (stage 2, input LR↑, reference HR): the same triplet loss on the student's features plus
  ``15 ×`` a distillation term: for each valid ``i``, the distribution over valid ``j`` of
  ``softmax_j(a_i · b_m(j) / T)``, the teacher's (on HR) as the target of the student's (on LR↑):
  ``KL(teacher ‖ student)``, summed over ``j`` and averaged over ``i`` (``kl_div(..., 'batchmean')``), then
  over samples; ``T = 0.15``.

Positions follow the official code: feature position ``(r, c)`` stands for image pixel ``(stride·r,
stride·c)`` (``stride = 4`` at conv3_1), whose match is read from the pixel-level correspondence map and
rounded to the nearest feature position after dividing by ``stride``; a match is valid when it lies strictly
more than ``border`` pixels (10) inside the reference. The official code tests the border against the
*input*'s size (its reference has the same size); here it is the reference's (``stride ×`` its feature size).
A masked-out negative gets ``+10`` (distances are at most 4), as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError

__all__ = [
    "correspondence_contrastive_loss",
    "correspondence_distillation_loss",
    "CorrespondenceContrastiveLoss",
    "CorrespondenceDistillationLoss",
]

# Added to a distance to take it out of a minimum: descriptor distances 2 - 2cos lie in [0, 4].
_EXCLUDED = 10.0


def _check(features_a: torch.Tensor, features_b: torch.Tensor, coords: torch.Tensor, stride: int | None) -> int:
    """Shapes must agree; returns the stride (inferred from ``coords`` when ``None``)."""
    if features_a.dim() != 4 or features_b.dim() != 4 or features_a.shape[:2] != features_b.shape[:2]:
        raise RefsrError(
            f"expected features (N, C, h, w) and (N, C, h2, w2); got {tuple(features_a.shape)} and "
            f"{tuple(features_b.shape)}"
        )
    n, _, h, w = features_a.shape
    if coords.dim() != 4 or coords.shape[0] != n or coords.shape[-1] != 2:
        raise RefsrError(f"expected correspondences of shape (N, H, W, 2) with N = {n}; got {tuple(coords.shape)}")
    if stride is None:
        stride = coords.shape[1] // h
    if stride < 1 or coords.shape[1] < stride * (h - 1) + 1 or coords.shape[2] < stride * (w - 1) + 1:
        raise RefsrError(
            f"the correspondence map {tuple(coords.shape[1:3])} does not cover features {h}x{w} at stride {stride}"
        )
    return stride


def _grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(2, h*w)`` (row, column) of every feature position, row-major."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)])


def _matches(
    coords: torch.Tensor, h: int, w: int, ref_hw: tuple[int, int], stride: int, border: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """For one sample: the flat indices of the valid input positions and their matches' feature positions.

    Args:
        coords: ``(H, W, 2)`` pixel-level (x, y) positions in the reference of every input pixel.

    Returns:
        ``ids (n,)`` long, ``matches (2, n)`` long (row, column) in the reference's feature map.
    """
    sampled = coords[: stride * (h - 1) + 1 : stride, : stride * (w - 1) + 1 : stride].reshape(-1, 2)
    x, y = sampled[:, 0], sampled[:, 1]
    height, width = ref_hw[0] * stride, ref_hw[1] * stride
    valid = torch.isfinite(x) & torch.isfinite(y)
    valid &= (x > border) & (x < width - border) & (y > border) & (y < height - border)
    ids = valid.nonzero().flatten()
    matches = torch.round(torch.stack([y[ids], x[ids]]) / stride).long()
    matches[0].clamp_(0, ref_hw[0] - 1)
    matches[1].clamp_(0, ref_hw[1] - 1)
    return ids, matches


def _triplet(
    a_all: torch.Tensor, ids: torch.Tensor, b_matched: torch.Tensor, matches: torch.Tensor, grid: torch.Tensor,
    margin: float, safe_radius: float,
) -> torch.Tensor:
    """One sample's hardest-negative triplet loss (see the module docstring); descriptors are columns."""
    a = a_all[:, ids]
    positive = 2 - 2 * (a * b_matched).sum(0)
    # Negatives among the reference descriptors at the other matches, outside the safe radius of m(i).
    near_b = (matches[:, :, None] - matches[:, None, :]).abs().amax(0) <= safe_radius
    negative_b = (2 - 2 * a.t() @ b_matched + _EXCLUDED * near_b).amin(1)
    # Negatives among all input descriptors, outside the safe radius of i.
    near_a = (grid[:, ids, None] - grid[:, None, :]).abs().amax(0) <= safe_radius
    negative_a = (2 - 2 * b_matched.t() @ a_all + _EXCLUDED * near_a).amin(1)
    return F.relu(margin + positive - torch.minimum(negative_a, negative_b)).mean()


def _no_sample_error(min_matches: int) -> RefsrError:
    return RefsrError(
        f"no sample in the batch has {min_matches} valid correspondences; use larger crops, a smaller "
        "warp or border, or lower min_matches"
    )


def correspondence_contrastive_loss(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    coords: torch.Tensor,
    *,
    margin: float = 1.0,
    safe_radius: float = 4,
    border: float = 10.0,
    min_matches: int = 128,
    stride: int | None = None,
) -> torch.Tensor:
    """C2-Matching's contrastive (hardest-negative triplet margin) correspondence loss.

    Args:
        features_a: the input image's features ``(N, C, h, w)`` (float; any scale: they are L2-normalised
            over C here).
        features_b: the reference's features ``(N, C, h2, w2)``.
        coords: ``(N, H, W, 2)`` float: for every input *pixel*, the (x, y) pixel position of the same scene
            point in the reference (pixel centres at integers); NaN or inf marks "no match".
        margin: the triplet margin (1.0).
        safe_radius: negatives closer than this (Chebyshev, feature pixels) to the true match are skipped (4).
        border: matches within this many pixels of the reference's edge are not used (10).
        min_matches: samples with fewer valid positions are skipped (128, official).
        stride: image pixels per feature pixel; ``None`` infers ``H // h`` (4 for conv3_1).

    Returns:
        A scalar tensor, averaged over the samples used.

    Raises:
        RefsrError: mismatched shapes, or no sample with ``min_matches`` valid positions.
    """
    stride = _check(features_a, features_b, coords, stride)
    n, c, h, w = features_a.shape
    grid = _grid(h, w, features_a.device)
    losses = []
    for k in range(n):  # samples differ in their number of valid matches
        ids, matches = _matches(coords[k], h, w, tuple(features_b.shape[-2:]), stride, border)
        if ids.numel() < max(min_matches, 1):
            continue
        a_all = F.normalize(features_a[k].reshape(c, -1), dim=0)
        b_matched = F.normalize(features_b[k][:, matches[0], matches[1]], dim=0)
        losses.append(_triplet(a_all, ids, b_matched, matches, grid, margin, safe_radius))
    if not losses:
        raise _no_sample_error(min_matches)
    return torch.stack(losses).mean()


def correspondence_distillation_loss(
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    coords: torch.Tensor,
    *,
    temperature: float = 0.15,
    border: float = 10.0,
    min_matches: int = 128,
    stride: int | None = None,
) -> torch.Tensor:
    """C2-Matching's distillation term: ``KL(teacher ‖ student)`` of the correspondence distributions.

    For each valid input position ``i`` the distribution over the valid matches ``j`` is
    ``softmax_j(cos(a_i, b_m(j)) / temperature)``. The teacher's features carry no gradient.

    Args:
        student_a, student_b: the student's features of the input (LR↑) and of the reference,
            ``(N, C, h, w)`` and ``(N, C, h2, w2)``.
        teacher_a, teacher_b: the teacher's features of the HR input and of the reference, the same shapes.
        coords: ``(N, H, W, 2)`` pixel-level (x, y) matches in the reference, as for
            :func:`correspondence_contrastive_loss`.
        temperature: the softmax temperature (0.15, official).
        border, min_matches, stride: as for :func:`correspondence_contrastive_loss`.

    Returns:
        A scalar tensor: per sample ``sum_ij t_ij (log t_ij - log s_ij) / n_valid``, averaged over samples.
    """
    stride = _check(student_a, student_b, coords, stride)
    if teacher_a.shape != student_a.shape or teacher_b.shape != student_b.shape:
        raise RefsrError(
            f"the teacher's features {tuple(teacher_a.shape)}, {tuple(teacher_b.shape)} must have the student's "
            f"shapes {tuple(student_a.shape)}, {tuple(student_b.shape)}"
        )
    if not temperature > 0:
        raise RefsrError(f"the distillation temperature must be positive; got {temperature}")
    n, c, h, w = student_a.shape
    losses = []
    for k in range(n):
        ids, matches = _matches(coords[k], h, w, tuple(student_b.shape[-2:]), stride, border)
        if ids.numel() < max(min_matches, 1):
            continue

        def similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            a_valid = F.normalize(a[k].reshape(c, -1), dim=0)[:, ids]
            b_matched = F.normalize(b[k][:, matches[0], matches[1]], dim=0)
            return a_valid.t() @ b_matched / temperature

        log_student = F.log_softmax(similarities(student_a, student_b), dim=1)
        with torch.no_grad():
            teacher = F.softmax(similarities(teacher_a.detach(), teacher_b.detach()), dim=1)
        losses.append(F.kl_div(log_student, teacher, reduction="batchmean"))
    if not losses:
        raise _no_sample_error(min_matches)
    return torch.stack(losses).mean()


class CorrespondenceContrastiveLoss(nn.Module):
    """:func:`correspondence_contrastive_loss` with its settings; ``forward(features_a, features_b, coords)``."""

    def __init__(self, *, margin: float = 1.0, safe_radius: float = 4, border: float = 10.0,
                 min_matches: int = 128, stride: int | None = None) -> None:
        super().__init__()
        self.margin, self.safe_radius, self.border = margin, safe_radius, border
        self.min_matches, self.stride = min_matches, stride

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return correspondence_contrastive_loss(
            features_a, features_b, coords, margin=self.margin, safe_radius=self.safe_radius, border=self.border,
            min_matches=self.min_matches, stride=self.stride,
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, safe_radius={self.safe_radius}, border={self.border}"


class CorrespondenceDistillationLoss(nn.Module):
    """:func:`correspondence_distillation_loss` with its settings;
    ``forward(student_a, student_b, teacher_a, teacher_b, coords)``."""

    def __init__(self, *, temperature: float = 0.15, border: float = 10.0, min_matches: int = 128,
                 stride: int | None = None) -> None:
        super().__init__()
        self.temperature, self.border, self.min_matches, self.stride = temperature, border, min_matches, stride

    def forward(self, student_a: torch.Tensor, student_b: torch.Tensor, teacher_a: torch.Tensor,
                teacher_b: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return correspondence_distillation_loss(
            student_a, student_b, teacher_a, teacher_b, coords, temperature=self.temperature, border=self.border,
            min_matches=self.min_matches, stride=self.stride,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, border={self.border}"
