"""Literal re-implementations of the official C2-Matching code base's pieces (C2-Matching, DATSR), in the
official state_dict key names, for the equivalence tests. Written from reading the official code: loops and
unfolds as they are there, nothing shared with refsr's implementation except ``refsr.ops.deform_conv2d``
(whose own tests check it against the DCNv2 CUDA kernel's semantics) and PIL for the loader's resizes.

Also the small utilities the peers' tests share (one thread, seeded weights, golden outputs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.ops import deform_conv2d

KEYS = Path(__file__).parents[1] / "assets" / "keys"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny maps: a second thread only adds synchronisation on shared cores (import into a test module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter drawn from one seeded generator (stable across runs, unlike an init with zeros)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
    return model


def check_golden(path: Path, sr: torch.Tensor, tolerance: float) -> None:
    """Compare ``sr`` with the stored golden output (``REFSR_REGEN_GOLDEN=1`` writes it first). The weights are
    seeded, not stored: the peers' fixed-width VGG and DCN parts make stored weights too large."""
    from safetensors.torch import load_file, save_file

    if os.environ.get("REFSR_REGEN_GOLDEN") == "1":
        save_file({"sr": sr.float().contiguous()}, str(path))
    stored = load_file(str(path))["sr"]
    assert sr.shape == stored.shape
    assert float((sr - stored.double()).abs().max()) < tolerance


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``tests/assets/keys/<name>.txt`` (one ``key (shape)`` a line; ``#`` lines skipped)."""
    table = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            table[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return table


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, std: float = 0.05,
                 dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Seeded normal values for every key (the official inits zero some convs, which would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen, dtype=dtype) * std for k, s in shapes.items()}


def with_imagenet_buffers(state: dict[str, torch.Tensor], prefixes, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Set the ``<prefix>mean`` / ``<prefix>std`` buffers to the ImageNet constants."""
    for prefix in prefixes:
        state[prefix + "mean"] = IMAGENET_MEAN.to(dtype).clone()
        state[prefix + "std"] = IMAGENET_STD.to(dtype).clone()
    return state


def conv(sd, x, name, stride=1):
    weight = sd[name + ".weight"]
    return F.conv2d(x, weight, sd[name + ".bias"], stride=stride, padding=weight.shape[-1] // 2)


def residual_blocks(sd, x, prefix):
    """``make_layer(ResidualBlockNoBN, n)``: conv-ReLU-conv + x, as many as the state has."""
    i = 0
    while f"{prefix}.{i}.conv1.weight" in sd:
        x = x + conv(sd, F.relu(conv(sd, x, f"{prefix}.{i}.conv1")), f"{prefix}.{i}.conv2")
        i += 1
    return x


# ---------------------------------------------------------------------------------------------------------
# The loader, the two extractors, the matching


def loader_pair(hr: np.ndarray, ref: np.ndarray, dtype=torch.float64):
    """RefCUFEDDataset's test branch for a pair of one size (HxWx3 uint8 RGB, sides multiples of 4):
    ``img_in_lq`` = PIL bicubic ÷4 of the HR, ``img_in_up`` = PIL bicubic x4 of that; tensors (1,3,H,W)."""
    h, w = hr.shape[:2]
    lq = Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC)
    up = lq.resize((w, h), Image.BICUBIC)

    def tensor(image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(dtype) / 255

    return tensor(lq), tensor(up), tensor(ref)


def contras_extractor(sd, image, prefix):
    """``ContrasExtractorLayer``: ImageNet normalisation, VGG16 to conv3_1 (no ReLU after it)."""
    x = (image - sd[prefix + ".mean"]) / sd[prefix + ".std"]
    for layer in ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1"):
        if layer == "pool":
            x = F.max_pool2d(x, 2, 2)
        else:
            x = conv(sd, x, f"{prefix}.model.{layer}")
            x = F.relu(x) if layer != "conv3_1" else x
    return x


def vgg_textures(sd, image):
    """``net_map.vgg`` (``VGGFeatureExtractor``, vgg19, input norm): relu1_1, relu2_1, relu3_1."""
    x = (image - sd["vgg.mean"]) / sd["vgg.std"]
    out = {}
    x = out["relu1_1"] = F.relu(conv(sd, x, "vgg.vgg_net.conv1_1"))
    x = F.max_pool2d(F.relu(conv(sd, x, "vgg.vgg_net.conv1_2")), 2, 2)
    x = out["relu2_1"] = F.relu(conv(sd, x, "vgg.vgg_net.conv2_1"))
    x = F.max_pool2d(F.relu(conv(sd, x, "vgg.vgg_net.conv2_2")), 2, 2)
    out["relu3_1"] = F.relu(conv(sd, x, "vgg.vgg_net.conv3_1"))
    return out


def feature_match_index(feat_input, feat_ref, chunk):
    """``ref_map_util.feature_match_index`` with ``norm_input=True``, one sample ``(c, h, w)``: the inside
    3x3 patches of the ref, each over (norm + 1e-5), as conv filters in chunks; strict '>' across chunks.
    Returns ``(max_idx, max_val)`` of shape ``(h-2, w-2)``."""
    c, h, w = feat_input.shape
    patches = feat_ref.unfold(1, 3, 1).unfold(2, 3, 1).reshape(c, -1, 3, 3).permute(0, 2, 3, 1)
    max_idx = max_val = None
    for start in range(0, patches.shape[-1], chunk):
        batch = patches[..., start : start + chunk]
        batch = batch / (batch.norm(p=2, dim=(0, 1, 2)) + 1e-5)
        corr = F.conv2d(feat_input.unsqueeze(0), batch.permute(3, 0, 1, 2))
        val, idx = corr.squeeze(0).max(dim=0)
        if max_idx is None:
            max_idx, max_val = idx, val
        else:
            better = val > max_val
            max_val[better] = val[better]
            max_idx[better] = idx[better] + start
    inputs = feat_input.unfold(1, 3, 1).unfold(2, 3, 1).reshape(c, -1, 3, 3).permute(0, 2, 3, 1)
    norm = (inputs.norm(p=2, dim=(0, 1, 2)) + 1e-5).view(h - 2, w - 2)
    return max_idx, max_val / norm


def index_to_flow(max_idx):
    """``(1, h, w, 2)`` (x, y) = match - grid on the inside grid, zero-padded by 2 at the bottom/right."""
    h, w = max_idx.shape
    grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    flow = torch.stack((max_idx % w - grid_x, max_idx // w - grid_y), dim=2).unsqueeze(0).double()
    return F.pad(flow, (0, 0, 0, 2, 0, 2))


def tensor_shift(x, shift):
    new = torch.zeros_like(x)
    sh, sw = shift
    new[:, sh:, sw:, :] = x[:, : x.shape[1] - sh, : x.shape[2] - sw, :]
    return new


def correspondence(sd, img_in_up, img_ref, chunk=5):
    """``CorrespondenceGenerationArch`` / ``FlowSimCorrespondenceGenerationArch`` for every sample: the
    shifted offsets ``[b, 9, H, W, 2]``, the flows ``[b, H, W, 2]`` and the similarities ``[b, 1, H, W]`` per
    level, and the VGG textures."""
    feats_in = contras_extractor(sd, img_in_up, "feature_extraction_image1")
    feats_ref = contras_extractor(sd, img_ref, "feature_extraction_image2")
    levels = {"relu3_1": 1, "relu2_1": 2, "relu1_1": 4}
    offsets = {k: [] for k in levels}
    flows = {k: [] for k in levels}
    sims = {k: [] for k in levels}
    for b in range(img_ref.shape[0]):
        c, h, w = feats_in[b].shape
        feat_in = F.normalize(feats_in[b].reshape(c, -1), dim=0).view(c, h, w)
        feat_ref = F.normalize(feats_ref[b].reshape(c, -1), dim=0).view(c, h, w)
        max_idx, max_val = feature_match_index(feat_in, feat_ref, chunk)
        flow = index_to_flow(max_idx)
        sim = F.pad(max_val, (1, 1, 1, 1)).unsqueeze(0)
        for name, s in levels.items():
            scaled = flow.repeat_interleave(s, 1).repeat_interleave(s, 2) * s
            flows[name].append(scaled)
            sims[name].append(sim.repeat_interleave(s, 1).repeat_interleave(s, 2))
            offsets[name].append(torch.cat([tensor_shift(scaled, (i * s, j * s)) for i in range(3) for j in range(3)]))
    return ({k: torch.stack(v) for k, v in offsets.items()}, {k: torch.cat(v) for k, v in flows.items()},
            {k: torch.stack(v) for k, v in sims.items()}, vgg_textures(sd, img_ref))


def dcn_pre_multi_offset(sd, x, feat, pre_offset, name, groups, similarity=None, max_residue=None):
    """``DCN_sep_pre_multi_offset`` (C2-Matching) and ``..._flow_similarity`` (DATSR: ``max_residue`` x tanh of
    the learned offset, mask logits times the similarity)."""
    out = conv(sd, feat, name + ".conv_offset_mask")
    o1, o2, mask = torch.chunk(out, 3, dim=1)
    offset = torch.cat((o1, o2), dim=1)
    if max_residue is not None:
        offset = max_residue * torch.tanh(offset)
    pre = pre_offset.repeat(1, groups, 1, 1, 1)
    reorder = torch.zeros_like(offset)
    reorder[:, 0::2] = pre[..., 1]
    reorder[:, 1::2] = pre[..., 0]
    mask = torch.sigmoid(mask * similarity if similarity is not None else mask)
    return deform_conv2d(x, offset + reorder, sd[name + ".weight"], sd[name + ".bias"], padding=1, mask=mask)


def official_test_pair(hr: np.ndarray, ref: np.ndarray, multiple: int):
    """RefCUFEDDataset's test branch (C2-Matching: ``multiple`` 4; DATSR's ``mod_crop``: 32): both images cut
    to multiples, zero-padded (bottom/right) to their common size; LR and Ref↓ PIL bicubic ÷4 of the padded
    pair. Returns uint8 ``(gt, lr, ref, ref_down)``; ``gt`` is the cut HR, not padded."""
    def cut(image):
        return image[: image.shape[0] // multiple * multiple, : image.shape[1] // multiple * multiple]

    gt, ref = cut(hr), cut(ref)
    size = (max(gt.shape[0], ref.shape[0]), max(gt.shape[1], ref.shape[1]))

    def pad(image):
        out = np.zeros((*size, 3), dtype=np.uint8)
        out[: image.shape[0], : image.shape[1]] = image
        return out

    def down(image):
        return np.array(Image.fromarray(image).resize((size[1] // 4, size[0] // 4), Image.BICUBIC))

    return gt, down(pad(gt)), pad(ref), down(pad(ref))
