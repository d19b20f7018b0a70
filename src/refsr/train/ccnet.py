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
* :func:`train_ccnet`: a minimal training loop driven by a config (``configs/ccnet.yaml``), writing
  ``ccnet.safetensors`` (a :class:`refsr.models.refsrnet.CCNet` state_dict that ``refsrnet``'s
  ``ccnet_weights=`` loads) and ``metrics.jsonl``.

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

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from refsr.errors import RefsrError
from refsr.matching.ccnet import upsample_lr

__all__ = [
    "ccnet_classification_loss",
    "window_scores",
    "correspondence_pairs",
    "CCNetPairs",
    "CCNetTrainConfig",
    "parse_ccnet_config",
    "load_ccnet_config",
    "train_ccnet",
    "collate_crops",
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
    from refsr.data.synthetic import SyntheticRefPairs

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


# ---------------------------------------------------------------------------------------------- the config
@dataclass(kw_only=True)
class CCNetModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64, 64, 128])
    dilations: list[int] = field(default_factory=lambda: [1, 1, 2, 4, 8, 16])
    out_channels: int = 256


@dataclass(kw_only=True)
class CCNetDataConfig:
    sources: list[dict[str, Any]] = field(default_factory=list)
    window: int = 129
    scale: int = 8
    grid: int = 8
    crops_per_sample: int = 4
    rotate: bool = True
    num_workers: int = 0


@dataclass(kw_only=True)
class CCNetOptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    milestones: list[int] = field(default_factory=lambda: [30000])
    lrs: list[float] = field(default_factory=lambda: [5e-5])


@dataclass(kw_only=True)
class CCNetRunConfig:
    batch: int = 16
    iterations: int = 50000
    log_interval: int = 50
    checkpoint_interval: int = 5000
    device: str = "auto"
    time_budget: float | str | None = None


@dataclass(kw_only=True)
class CCNetTrainConfig:
    """The CC-Net training run (``configs/ccnet.yaml``); ``task: ccnet`` routes a config here."""

    task: str = "ccnet"
    name: str | None = None
    seed: int = 0
    model: CCNetModelConfig = field(default_factory=CCNetModelConfig)
    data: CCNetDataConfig = field(default_factory=CCNetDataConfig)
    optimizer: CCNetOptimConfig = field(default_factory=CCNetOptimConfig)
    train: CCNetRunConfig = field(default_factory=CCNetRunConfig)


def _fill(cls: type, data: Mapping[str, Any], path: str) -> Any:
    if not isinstance(data, Mapping):
        raise RefsrError(f"{path or 'the config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RefsrError(f"{where}: unknown field{hint} (fields: {', '.join(known)})")
        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            value = _fill(type(default), value, where)
        kwargs[key] = value
    return cls(**kwargs)


def parse_ccnet_config(data: Mapping[str, Any]) -> CCNetTrainConfig:
    """A :class:`CCNetTrainConfig` from a mapping (the YAML); unknown fields raise :class:`RefsrError`."""
    cfg = _fill(CCNetTrainConfig, data, "")
    if cfg.task != "ccnet":
        raise RefsrError(f"task: this entry trains CC-Net ('ccnet'); got {cfg.task!r}")
    if not cfg.data.sources:
        raise RefsrError("data.sources: give at least one dataset, e.g. {dataset: sintel, root: ~/data/Sintel}")
    for i, source in enumerate(cfg.data.sources):
        if not isinstance(source, Mapping) or "dataset" not in source:
            raise RefsrError(f"data.sources[{i}]: expected a mapping with a 'dataset' name")
    if len(cfg.optimizer.milestones) != len(cfg.optimizer.lrs):
        raise RefsrError("optimizer.lrs: give one learning rate per milestone")
    for name in ("batch", "iterations", "log_interval", "checkpoint_interval"):
        if int(getattr(cfg.train, name)) < 1:
            raise RefsrError(f"train.{name}: must be positive")
    cfg.optimizer.lr = float(cfg.optimizer.lr)
    cfg.optimizer.lrs = [float(v) for v in cfg.optimizer.lrs]
    return cfg


def load_ccnet_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> CCNetTrainConfig:
    """Read ``configs/ccnet.yaml``-style YAML, apply ``key.path=value`` overrides, validate."""
    from refsr.train.config import apply_overrides, read_config_file

    p, data = read_config_file(path)
    try:
        apply_overrides(data, overrides)
        cfg = parse_ccnet_config(data)
    except RefsrError as exc:
        raise RefsrError(f"{p}: {exc}") from None
    if cfg.name is None:
        cfg.name = p.stem
    return cfg


# ---------------------------------------------------------------------------------------------- training
def _build_source(cfg: CCNetTrainConfig) -> Dataset:
    from torch.utils.data import ConcatDataset

    from refsr.train.builders import build_dataset

    parts = []
    for i, source in enumerate(cfg.data.sources):
        options = {k: v for k, v in source.items() if k not in ("dataset", "root")}
        dataset = build_dataset(source["dataset"], source.get("root"), options, seed=cfg.seed,
                                scale=cfg.data.scale, path=f"data.sources[{i}]")
        parts.append(CCNetPairs(dataset, window=cfg.data.window, scale=cfg.data.scale, grid=cfg.data.grid,
                                crops_per_sample=cfg.data.crops_per_sample, rotate=cfg.data.rotate,
                                seed=cfg.seed + 1000 * i))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_at(cfg: CCNetOptimConfig, iteration: int) -> float:
    lr = cfg.lr
    for milestone, value in zip(cfg.milestones, cfg.lrs):
        if iteration >= milestone:
            lr = value
    return lr


def train_ccnet(config: CCNetTrainConfig | Mapping[str, Any] | str | os.PathLike, *,
                out: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                iterations: int | None = None) -> dict[str, Any]:
    """Train a CC-Net as the paper does (Eq. 1, Adam) and write ``OUT/ccnet.safetensors`` and
    ``OUT/metrics.jsonl``.

    Args:
        config: a :class:`CCNetTrainConfig`, its mapping, or a YAML file (``configs/ccnet.yaml``).
        out: the output folder (default ``runs/<name>``).
        overrides: ``key.path=value`` strings (YAML values), applied to a YAML file's contents.
        iterations: stop after this many iterations (overrides ``train.iterations``), e.g. for a smoke test.

    Returns:
        A summary: ``iterations``, ``loss`` and ``accuracy`` (top-1, of the last logged iteration),
        ``seconds_per_iteration`` (mean wall time, data included), ``weights`` (the file written).
    """
    from refsr.hub import save_safetensors
    from refsr.models.refsrnet import CCNet

    if isinstance(config, (str, os.PathLike)):
        cfg = load_ccnet_config(config, overrides)
    elif isinstance(config, CCNetTrainConfig):
        cfg = config
    else:
        cfg = parse_ccnet_config(config)
    from refsr.train.schema import parse_duration

    budget = parse_duration(cfg.train.time_budget, "train.time_budget") if cfg.train.time_budget else None
    total = int(iterations if iterations is not None else cfg.train.iterations)
    out_dir = Path(out if out is not None else Path("runs") / (cfg.name or "ccnet")).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.train.device)

    torch.manual_seed(cfg.seed)
    network = CCNet(channels=cfg.model.channels, dilations=cfg.model.dilations,
                    out_channels=cfg.model.out_channels).to(device).train()
    if network.receptive_field != _FIELD:
        raise RefsrError(f"model.dilations: CC-Net's training patches are 65x65, so the receptive field must be "
                         f"65 (1 + 2 * sum(dilations)); got {network.receptive_field}")
    optimizer = torch.optim.Adam(network.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas))
    dataset = _build_source(cfg)
    per_item = cfg.data.crops_per_sample
    loader = DataLoader(dataset, batch_size=max(1, math.ceil(cfg.train.batch / per_item)), shuffle=True,
                        num_workers=cfg.data.num_workers, collate_fn=collate_crops, drop_last=False,
                        generator=torch.Generator().manual_seed(cfg.seed))
    weights_path = out_dir / "ccnet.safetensors"
    metrics = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
    started = time.perf_counter()
    iteration = 0
    summary: dict[str, Any] = {}
    try:
        while iteration < total:
            for batch in loader:
                if iteration >= total or (budget is not None and time.perf_counter() - started > budget):
                    total = iteration
                    break
                lr_up = batch["lr_up"][: cfg.train.batch].to(device)
                ref = batch["ref"][: cfg.train.batch].to(device)
                target = batch["target"][: cfg.train.batch].to(device)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(cfg.optimizer, iteration)
                # One BN batch for both streams would mix their statistics; the paper's Siamese streams are
                # two passes through the same layers, so BN sees each stream's batch on its own.
                f = network(lr_up, padding="valid")
                g = network(ref, padding="valid")
                loss = ccnet_classification_loss(f, g, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                iteration += 1
                if iteration % cfg.train.log_interval == 0 or iteration == total:
                    with torch.no_grad():
                        accuracy = float((window_scores(f, g).argmax(dim=1) == target).float().mean())
                    elapsed = time.perf_counter() - started
                    summary = {"iteration": iteration, "loss": float(loss.detach()), "accuracy": accuracy,
                               "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed}
                    metrics.write(json.dumps(summary) + "\n")
                    metrics.flush()
                if iteration % cfg.train.checkpoint_interval == 0:
                    save_safetensors(network.state_dict(), weights_path)
    finally:
        metrics.close()
    save_safetensors(network.state_dict(), weights_path)
    elapsed = time.perf_counter() - started
    return {"iterations": iteration, "loss": summary.get("loss"), "accuracy": summary.get("accuracy"),
            "seconds_per_iteration": elapsed / max(iteration, 1), "weights": str(weights_path)}
