"""Training RefSR-Net's CC-Net as a classification over a search window (paper Sec. 3, 5.1).

Paper (Zheng et al., BMVC 2017): a 65x65 patch of the bilinearly upsampled LR gives one descriptor ``f``
(valid convolution), a 193x193 reference patch centred at the true match gives a 129x129 map ``g``; the
scores ``s_ij = <f, g_ij>`` go through a 2-D softmax and Eq. 1, ``L = -sum q_ij log p_ij``, the cross-entropy
against the one-hot ``q`` of the true match. Adam, mini-batch 16, learning rate 1e-3 for 30K iterations,
optionally 5e-5 for 20K more.

This module:

* :func:`ccnet_classification_loss`: Eq. 1 on given descriptors (mean over the batch);
* :func:`correspondence_pairs`: the known matches of a training sample, from a stereo ``disparity``
  (:class:`refsr.data.open_pairs.OpenPairs`), a Sintel ``flow`` (:class:`refsr.data.sintel.SintelPairs`) or
  the exact warp of a :class:`refsr.data.synthetic.SyntheticRefPairs` sample;
* :class:`CCNetPairs`: a dataset of ``(lr_up 65x65, ref (W+64)x(W+64), target)`` crops from any of those;
* :class:`CCNetTask`: ``task: ccnet`` for the one training loop (``refsr train configs/ccnet.yaml``), with
  resume, DDP, mixed precision and the monitor like every task. The run's ``checkpoints/last/model.safetensors``
  is a :class:`refsr.models.refsrnet.CCNet` state_dict, which ``refsrnet``'s ``ccnet_weights=`` loads;
  ``metrics.jsonl`` logs the loss and the top-1 accuracy in the window.

Choices the paper leaves open:

1. **Window placement**: centred at the true match, as the paper says, but shifted to stay inside the
   reference when the match is near its border (then the target is off-centre); a reference smaller than the
   window is padded by replication. The 32-pixel rim around the window, which the valid convolution eats,
   is replicated where it leaves the reference.
2. **Sample positions**: LR-patch centres on the paper's grid (multiples of ``grid`` = 8 in upsampled-LR
   pixels, 0-based), with the whole 65x65 patch inside the image; the HR-offset augmentation of Sec. 5 is
   left to the data (synthetic warps and flows put matches at every phase anyway).
3. **Sub-pixel matches**: the one-hot target is the nearest reference pixel. Flows defined on the reference
   grid (Sintel's forward flow) are used in that direction, with the target position rounded instead, so no
   flow inversion is needed.
4. **Rotation augmentation** (Sec. 5, {0, 90, 180, 270} degrees): both crops turned together, the target
   moved with them.
5. **Loss reduction**: the mean over the batch (Fig. 2's scale suggests a sum; it only rescales the lr).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from refsr.data.registry import build_dataset
from refsr.data.synthetic import SyntheticRefPairs
from refsr.errors import RefsrError
from refsr.matching.ccnet import upsample_lr
from refsr.train import builders
from refsr.train.config import resolve_target
from refsr.train.distributed import DistContext
from refsr.train.schema import Config
from refsr.train.task import MicroBatchResult, Task

__all__ = [
    "ccnet_classification_loss",
    "window_scores",
    "correspondence_pairs",
    "cut_crops",
    "CCNetPairs",
    "collate_crops",
    "CCNetTask",
]

#: The CC-Net input patch side (its receptive field, Table 1) and half of it.
_FIELD = 65
_HALF = _FIELD // 2


# ------------------------------------------------------------------------------------------------ the loss
def window_scores(lr_features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
    """``s_ij = <f, g_ij>``: ``lr_features (N,C)`` or ``(N,C,1,1)``, ``ref_features (N,C,Wh,Ww)`` ->
    ``(N, Wh*Ww)`` scores, row-major over the window."""
    if lr_features.dim() == 4:
        if lr_features.shape[-2:] != (1, 1):
            raise RefsrError(f"lr_features must be (N, C) or (N, C, 1, 1); got {tuple(lr_features.shape)}")
        lr_features = lr_features.flatten(1)
    if lr_features.dim() != 2 or ref_features.dim() != 4 or ref_features.shape[:2] != lr_features.shape:
        raise RefsrError(f"expected lr_features (N, C) and ref_features (N, C, Wh, Ww); got "
                         f"{tuple(lr_features.shape)} and {tuple(ref_features.shape)}")
    return torch.einsum("nc,nck->nk", lr_features, ref_features.flatten(2))


def ccnet_classification_loss(lr_features: torch.Tensor, ref_features: torch.Tensor, target: torch.Tensor,
                              *, reduction: str = "mean") -> torch.Tensor:
    """Paper Eq. 1: cross-entropy of the 2-D softmax of window scores against the one-hot true match.

    Args:
        lr_features: ``(N, C)`` or ``(N, C, 1, 1)``: the descriptor of each 65x65 upsampled-LR patch.
        ref_features: ``(N, C, Wh, Ww)``: the descriptors of the candidate window (129x129 in the paper).
        target: ``LongTensor (N,)`` flat index ``y * Ww + x`` of the true match in the window, or ``(N, 2)``
            ``(y, x)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, as in ``F.cross_entropy``.

    Returns:
        The loss (a scalar, or ``(N,)`` for ``"none"``), dtype of the features.
    """
    scores = window_scores(lr_features, ref_features)
    width = ref_features.shape[-1]
    if target.dim() == 2 and target.shape[-1] == 2:
        target = target[:, 0] * width + target[:, 1]
    if target.shape != scores.shape[:1] or target.dtype not in (torch.int64, torch.int32):
        raise RefsrError(f"target must be an integer tensor (N,) or (N, 2); got {tuple(target.shape)}")
    if bool((target < 0).any() or (target >= scores.shape[1]).any()):
        raise RefsrError("target lies outside the candidate window")
    return F.cross_entropy(scores, target.long(), reduction=reduction)


# --------------------------------------------------------------------------------------- correspondences
def correspondence_pairs(sample: Mapping[str, Any], source: Dataset | None = None, index: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray] | None:
    """The known matches of one sample, as ``(target_yx, ref_yx)`` float arrays ``(M, 2)`` in HR/reference
    pixels (pixel centres at integers), or ``None`` when the sample has none.

    - ``disparity`` ``(H, W)`` (stereo, NaN = unknown): ``hr[y, x]`` shows ``ref[y, x - d]``;
    - ``flow`` ``(2, Hr, Wr)`` on the reference grid (Sintel): reference ``(x, y)`` is at ``(x + u, y + v)``;
    - a :class:`~refsr.data.synthetic.SyntheticRefPairs` ``source`` with the sample's ``index``: the exact
      homography (and flip) that made the reference, composed with the target crop's offset.
    """
    if "disparity" in sample:
        disp = torch.as_tensor(sample["disparity"]).double().numpy()
        ys, xs = np.nonzero(np.isfinite(disp))
        target = np.stack((ys, xs), axis=1).astype(np.float64)
        return target, np.stack((ys, xs - disp[ys, xs]), axis=1)
    if "flow" in sample:
        flow = torch.as_tensor(sample["flow"]).double().numpy()
        ok = np.isfinite(flow).all(axis=0)
        ys, xs = np.nonzero(ok)
        ref = np.stack((ys, xs), axis=1).astype(np.float64)
        return np.stack((ys + flow[1, ys, xs], xs + flow[0, ys, xs]), axis=1), ref
    if isinstance(source, SyntheticRefPairs) and index is not None:
        params = source.params(index)
        side = source.config.ref_side
        h, w = torch.as_tensor(sample["hr"]).shape[-2:]
        ys, xs = np.mgrid[0:h, 0:w]
        photo = np.stack((xs.ravel() + params.target_xy[0], ys.ravel() + params.target_xy[1],
                          np.ones(h * w)), axis=1)
        mapped = photo @ np.linalg.inv(params.ref_to_photo(side)).T
        ref_x, ref_y = mapped[:, 0] / mapped[:, 2], mapped[:, 1] / mapped[:, 2]
        if params.flip:
            ref_x = side - 1 - ref_x
        target = np.stack((ys.ravel(), xs.ravel()), axis=1).astype(np.float64)
        return target, np.stack((ref_y, ref_x), axis=1)
    return None


def rotate_target(target_yx: tuple[int, int], side: int, k: int) -> tuple[int, int]:
    """Where ``(y, x)`` of a ``side``-sided square goes under ``torch.rot90(..., k, dims=(-2, -1))``."""
    y, x = target_yx
    for _ in range(k % 4):
        y, x = side - 1 - x, y
    return y, x


def cut_crops(lr_up: torch.Tensor, ref: torch.Tensor, target_yx: Sequence[int], ref_yx: Sequence[int],
              window: int, rotation: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One training example: the 65x65 ``lr_up`` patch centred at ``target_yx``, the ``(window+64)``-sided
    reference crop whose ``window x window`` candidate centres contain ``ref_yx`` (choice 1), and the flat
    index of ``ref_yx`` in the window; both crops turned by ``rotation`` quarter turns (choice 4).

    ``lr_up (3,H,W)``, ``ref (3,Hr,Wr)``; the LR patch must lie inside ``lr_up``.
    """
    ty, tx = (int(v) for v in target_yx)
    lr_patch = lr_up[:, ty - _HALF : ty + _HALF + 1, tx - _HALF : tx + _HALF + 1]
    if lr_patch.shape[-2:] != (_FIELD, _FIELD):
        raise RefsrError(f"the 65x65 LR patch at {(ty, tx)} leaves the {tuple(lr_up.shape[-2:])} image")
    height, width = ref.shape[-2:]
    origin = []
    for pos, extent in ((int(ref_yx[0]), height), (int(ref_yx[1]), width)):
        origin.append(min(max(pos - window // 2, 0), max(extent - window, 0)))
    wy, wx = origin
    # Replicate-pad so that the window's rim (and a window larger than the reference) can be cut anywhere.
    pad_bottom = max(0, wy + window + _HALF - height)
    pad_right = max(0, wx + window + _HALF - width)
    padded = F.pad(ref[None], (_HALF, pad_right, _HALF, pad_bottom), mode="replicate")[0]
    side = window + 2 * _HALF
    ref_crop = padded[:, wy : wy + side, wx : wx + side]
    target = (int(ref_yx[0]) - wy, int(ref_yx[1]) - wx)
    if rotation % 4:
        lr_patch = torch.rot90(lr_patch, rotation, dims=(-2, -1))
        ref_crop = torch.rot90(ref_crop, rotation, dims=(-2, -1))
        target = rotate_target(target, window, rotation)
    return lr_patch.contiguous(), ref_crop.contiguous(), target[0] * window + target[1]


class CCNetPairs(Dataset):
    """CC-Net training examples from a dataset whose samples carry a known correspondence.

    Args:
        source: a dataset of ``{"lr", "ref", ...}`` samples with ``disparity``/``flow``, or a
            :class:`~refsr.data.synthetic.SyntheticRefPairs` (see :func:`correspondence_pairs`). Samples
            without a usable match are skipped (the next sample is tried).
        window: the candidate window side (129 in the paper: ±64).
        scale: the LR's factor; the LR is upsampled bilinearly by it (:func:`refsr.matching.ccnet.upsample_lr`).
        grid: LR-patch centres at multiples of ``grid`` upsampled-LR pixels (8, the paper's ``8m + 1``).
        crops_per_sample: examples cut from each loaded sample (different matches).
        rotate: random quarter turns of each example.
        seed: seeds every random choice: the example ``i`` is the same in any order and any worker.

    Items: ``{"lr_up": (K,3,65,65), "ref": (K,3,window+64,window+64), "target": LongTensor (K,)}`` float32
    RGB in [0, 1], ``K = crops_per_sample``; :func:`collate_crops` concatenates items.
    """

    def __init__(self, source: Dataset, *, window: int = 129, scale: int = 8, grid: int = 8,
                 crops_per_sample: int = 1, rotate: bool = True, seed: int = 0) -> None:
        if window < 1 or window % 2 == 0:
            raise RefsrError(f"window must be a positive odd integer; got {window}")
        if grid < 1 or crops_per_sample < 1 or scale < 1:
            raise RefsrError("grid, crops_per_sample and scale must be positive")
        if len(source) == 0:
            raise RefsrError("the CC-Net training source is empty")
        self.source, self.window, self.scale, self.grid = source, window, scale, grid
        self.crops_per_sample, self.rotate, self.seed = crops_per_sample, rotate, seed

    def __len__(self) -> int:
        return len(self.source)

    def _usable(self, sample: Mapping[str, Any], index: int, lr_size: tuple[int, int], ref_size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray] | None:
        pairs = correspondence_pairs(sample, self.source, index)
        if pairs is None:
            return None
        target, ref = (np.rint(a).astype(np.int64) for a in pairs)
        keep = (np.all(target % self.grid == 0, axis=1)
                & (target[:, 0] >= _HALF) & (target[:, 0] < lr_size[0] - _HALF)
                & (target[:, 1] >= _HALF) & (target[:, 1] < lr_size[1] - _HALF)
                & (ref[:, 0] >= 0) & (ref[:, 0] < ref_size[0]) & (ref[:, 1] >= 0) & (ref[:, 1] < ref_size[1]))
        if not keep.any():
            return None
        return target[keep], ref[keep]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        for attempt in range(len(self.source)):
            i = (index + attempt) % len(self.source)
            sample = self.source[i]
            lr, ref = torch.as_tensor(sample["lr"]), torch.as_tensor(sample["ref"])
            lr_up = upsample_lr(lr[None].float(), self.scale)[0]
            found = self._usable(sample, i, tuple(lr_up.shape[-2:]), tuple(ref.shape[-2:]))
            if found is not None:
                break
        else:
            raise RefsrError("no sample of the CC-Net training source has a known match away from its borders; "
                             "use stereo pairs with disparity, Sintel with flow, or synthetic references")
        targets, refs = found
        picks = rng.integers(0, len(targets), size=self.crops_per_sample)
        rotations = rng.integers(0, 4, size=self.crops_per_sample) if self.rotate else np.zeros(
            self.crops_per_sample, dtype=np.int64)
        lr_patches, ref_crops, labels = [], [], []
        for pick, rotation in zip(picks, rotations):
            a, b, label = cut_crops(lr_up, ref.float(), targets[pick], refs[pick], self.window, int(rotation))
            lr_patches.append(a)
            ref_crops.append(b)
            labels.append(label)
        return {"lr_up": torch.stack(lr_patches), "ref": torch.stack(ref_crops),
                "target": torch.tensor(labels, dtype=torch.long)}


def collate_crops(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate :class:`CCNetPairs` items along the first dimension."""
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


# ---------------------------------------------------------------------------------------------- the task
class CCNetTask(Task):
    """``task: ccnet``: Eq. 1 on :class:`CCNetPairs` cut from every ``data.train`` source.

    The network is ``model.name`` (``refsr.models.refsrnet:CCNet``) built with ``model.overrides``; each
    micro-batch loads ``ceil(train.batch / ccnet.crops_per_sample)`` image pairs and trains on the first
    ``train.batch`` crops cut from them. The paper's schedule (1e-3 for 30K iterations, then 5e-5) is
    ``schedule: {name: multistep, milestones: [30000], gamma: 0.05}``.
    """

    def __init__(self, cfg: Config, ctx: DistContext) -> None:
        super().__init__(cfg, ctx)
        torch.manual_seed(cfg.seed)
        network = resolve_target(cfg.model.name, "model.name")(**cfg.model.overrides)
        field = getattr(network, "receptive_field", None)  # what a CC-Net declares; anything else is refused
        if field != _FIELD:
            raise RefsrError(f"model: CC-Net's training patches are 65x65, so the network's receptive field must "
                             f"be 65 (1 + 2 * sum(dilations)); {cfg.model.name} has {field}")
        self.model = network.to(ctx.device).train()
        self.optimizer = builders.build_optimizer(self.model, cfg.optimizer)
        c = cfg.ccnet
        parts = []
        for i, source in enumerate(cfg.data.train.sources):
            dataset = build_dataset(source.dataset, source.root, source.options, seed=cfg.seed,
                                             scale=c.scale, path=f"data.train.sources[{i}]")
            parts.append(CCNetPairs(dataset, window=c.window, scale=c.scale, grid=c.grid,
                                    crops_per_sample=c.crops_per_sample, rotate=c.rotate, seed=cfg.seed + 1000 * i))
        self.dataset = _Concatenated(parts)
        self.collate = collate_crops
        self.micro_batch = max(1, math.ceil(cfg.train.batch / c.crops_per_sample))

    def losses(self, net: nn.Module, batch: Mapping[str, Any], *, iteration: int,
               want_images: bool) -> MicroBatchResult:
        batch_size = self.cfg.train.batch
        lr_up, ref, target = (batch[k][:batch_size] for k in ("lr_up", "ref", "target"))
        # One BN batch for both streams would mix their statistics; the paper's Siamese streams are two passes
        # through the same layers, so BN sees each stream's batch on its own.
        f = net(lr_up, padding="valid")
        g = net(ref, padding="valid")
        loss = ccnet_classification_loss(f.float(), g.float(), target)
        with torch.no_grad():
            accuracy = float((window_scores(f.float(), g.float()).argmax(dim=1) == target).float().mean())
        return MicroBatchResult([("classification", loss)], metrics={"accuracy": accuracy})


class _Concatenated(Dataset):
    """Several :class:`CCNetPairs` one after another, with ``sizes`` (one per source) for the sampler."""

    def __init__(self, parts: Sequence[CCNetPairs]) -> None:
        self.parts = list(parts)
        self.sizes = [len(p) for p in self.parts]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for part, size in zip(self.parts, self.sizes):
            if index < size:
                return part[index]
            index -= size
        raise IndexError(index)
