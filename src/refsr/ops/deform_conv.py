"""Modulated deformable convolution (DCNv2) in pure PyTorch, with torchvision's kernel when it is available.

Semantics are those of the DCNv2 CUDA kernel that C2-Matching, AMSA and DATSR ship (``dcn_v2_im2col_cuda.cu``)
and of ``torchvision.ops.deform_conv2d``, which agree:

* ``offset`` has ``2 * G * kh * kw`` channels for ``G`` deformable groups; channel ``g*2K + 2k`` is the
  vertical shift ``dy`` and ``g*2K + 2k + 1`` the horizontal shift ``dx`` of tap ``k = i*kw + j`` of group
  ``g`` (``K = kh * kw``). ``mask`` has ``G * K`` channels, channel ``g*K + k``, already passed through a
  sigmoid by the caller.
* Tap ``(i, j)`` of output pixel ``(ho, wo)`` samples the input at
  ``(ho*stride - padding + i*dilation + dy, wo*stride - padding + j*dilation + dx)`` with bilinear
  interpolation; each of the four corners that lies outside the image contributes zero (so a position with
  ``h <= -1``, ``h >= H``, ``w <= -1`` or ``w >= W`` samples exactly zero).
* Input channels are split into ``G`` contiguous blocks; block ``g`` uses group ``g``'s offsets and mask.

The pure path samples every tap of every output pixel with one ``F.grid_sample`` call (bilinear, zero
padding; that rule is exactly the kernel's four-corner rule above) into an im2col buffer of
``N * C_in * K * Ho * Wo`` elements, scales it by the mask and contracts it with the weight in a single
batched matmul. No pixel loops; the buffer is the only large temporary (it is reshaped by views, never
copied), and without autograd the mask is applied in place.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError

__all__ = ["deform_conv2d", "DeformConv2d", "BACKENDS", "torchvision_available"]

#: Values accepted by the ``backend`` keyword: "auto" uses torchvision when it imports, else "torch".
BACKENDS = ("auto", "torch", "torchvision")

IntOrPair = Union[int, tuple[int, int]]

# Cached result of the one lazy torchvision import: unset, the callable, or None (import failed).
_UNSET = object()
_torchvision_op: Any = _UNSET
_torchvision_error: str = ""


def _load_torchvision_op() -> Optional[Any]:
    """``torchvision.ops.deform_conv2d``, or None when torchvision cannot be imported (cached, tried once)."""
    global _torchvision_op, _torchvision_error
    if _torchvision_op is _UNSET:
        try:
            from torchvision.ops import deform_conv2d as op  # noqa: PLC0415 (optional, heavy import)

            _torchvision_op = op
        # Not just ImportError: a PyPI torchvision built for another torch raises RuntimeError or
        # AttributeError while registering its C++ ops, and that must only disable the fast path.
        except Exception as error:  # noqa: BLE001
            _torchvision_op = None
            _torchvision_error = f"{type(error).__name__}: {error}".splitlines()[0]
    return _torchvision_op


def torchvision_available() -> bool:
    """True when ``torchvision.ops.deform_conv2d`` imports in this environment (checked once, cached)."""
    return _load_torchvision_op() is not None


def _pair(value: IntOrPair, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, bool):
        raise RefsrError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            message = f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}"
            raise RefsrError(message) from None
        if len(pair) != 2 or any(isinstance(v, bool) for v in value):  # type: ignore[union-attr]
            raise RefsrError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise RefsrError(f"deform_conv2d: {name} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_4d(tensor: Any, name: str, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise RefsrError(
            f"deform_conv2d: {name} must be a torch.Tensor {layout}, got {type(tensor).__name__}"
        )
    if tensor.dim() != 4:
        raise RefsrError(f"deform_conv2d: {name} must be 4-D {layout}, got shape {tuple(tensor.shape)}")


def _validate(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Check every shape; return ``(groups, offset_groups, out_h, out_w)``."""
    _check_4d(input, "input", "(N, C_in, H, W)")
    _check_4d(offset, "offset", "(N, 2*G*kh*kw, Ho, Wo)")
    _check_4d(weight, "weight", "(C_out, C_in/groups, kh, kw)")
    if mask is not None:
        _check_4d(mask, "mask", "(N, G*kh*kw, Ho, Wo)")
    if not input.is_floating_point():
        raise RefsrError(f"deform_conv2d: input must be a floating-point tensor, got {input.dtype}")
    for name, tensor in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise RefsrError(
                f"deform_conv2d: {name} dtype {tensor.dtype} differs from input dtype {input.dtype}; "
                "convert them to one dtype"
            )

    batch, in_channels, height, width = input.shape
    out_channels, weight_in_channels, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    if weight_in_channels == 0 or taps == 0 or out_channels == 0:
        raise RefsrError(f"deform_conv2d: weight shape {tuple(weight.shape)} has an empty dimension")
    if in_channels % weight_in_channels != 0:
        raise RefsrError(
            f"deform_conv2d: input has {in_channels} channels, not a multiple of weight.shape[1] = "
            f"{weight_in_channels} (weight must be (C_out, C_in/groups, kh, kw))"
        )
    groups = in_channels // weight_in_channels
    if out_channels % groups != 0:
        raise RefsrError(
            f"deform_conv2d: {out_channels} output channels do not split into {groups} conv groups "
            f"(C_in={in_channels}, weight.shape[1]={weight_in_channels})"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise RefsrError(
            f"deform_conv2d: bias must have shape ({out_channels},), got {tuple(bias.shape)}"
        )

    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise RefsrError(
            f"deform_conv2d: input {height}x{width} is too small for a {kernel_h}x{kernel_w} kernel with "
            f"padding {padding} and dilation {dilation}; enlarge or pad the input"
        )

    if offset.shape[0] != batch:
        raise RefsrError(f"deform_conv2d: offset batch {offset.shape[0]} differs from input batch {batch}")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise RefsrError(
            f"deform_conv2d: offset has {offset.shape[1]} channels; it needs 2*G*kh*kw, a positive "
            f"multiple of {2 * taps} for a {kernel_h}x{kernel_w} kernel"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if in_channels % offset_groups != 0:
        raise RefsrError(
            f"deform_conv2d: {in_channels} input channels do not split into {offset_groups} deformable "
            f"groups (offset has {offset.shape[1]} = 2*{offset_groups}*{taps} channels)"
        )
    if tuple(offset.shape[2:]) != (out_h, out_w):
        raise RefsrError(
            f"deform_conv2d: offset is {offset.shape[2]}x{offset.shape[3]} but the output is "
            f"{out_h}x{out_w}; "
            "the offset must have the output's spatial size"
        )
    if mask is not None:
        if mask.shape[0] != batch:
            raise RefsrError(f"deform_conv2d: mask batch {mask.shape[0]} differs from input batch {batch}")
        if mask.shape[1] != offset_groups * taps:
            raise RefsrError(
                f"deform_conv2d: mask has {mask.shape[1]} channels; it needs G*kh*kw = "
                f"{offset_groups}*{taps} = "
                f"{offset_groups * taps} to match the offset"
            )
        if tuple(mask.shape[2:]) != (out_h, out_w):
            raise RefsrError(
                f"deform_conv2d: mask is {mask.shape[2]}x{mask.shape[3]} but the output is {out_h}x{out_w}; "
                "the mask must have the output's spatial size"
            )
    return groups, offset_groups, out_h, out_w


def _deform_conv2d_torch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    batch, in_channels, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    channels_per_group = in_channels // offset_groups
    dtype, device = input.dtype, input.device

    # Undeformed sampling positions, tap-major so that taps stack along the height axis of the sample:
    # rows (k, ho) and columns wo of a (K*Ho, Wo) grid.
    tap_i = torch.arange(kernel_h, device=device, dtype=dtype).repeat_interleave(kernel_w)  # (K,)
    tap_j = torch.arange(kernel_w, device=device, dtype=dtype).repeat(kernel_h)  # (K,)
    rows = torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1]
    base_y = (tap_i * dilation[0]).view(taps, 1, 1) + rows.view(1, out_h, 1)  # (K, Ho, 1)
    base_x = (tap_j * dilation[1]).view(taps, 1, 1) + cols.view(1, 1, out_w)  # (K, 1, Wo)

    # grid_sample with align_corners=False maps normalised u to pixel ((u + 1) * size - 1) / 2, so pixel p is
    # u = (2p + 1) / size - 1. Unlike align_corners=True (u = 2p / (size - 1) - 1) this stays finite for a
    # 1-pixel side, and with zero padding its bilinear rule is the DCN kernel's four-corner rule. The map is
    # affine, so the undeformed part is normalised once and the offsets are only scaled by 2 / size.
    base_u_y = (2 * base_y + 1) / height - 1
    base_u_x = (2 * base_x + 1) / width - 1
    offset = offset.reshape(batch, offset_groups, taps, 2, out_h, out_w)
    grid = torch.stack(
        (base_u_x + offset[:, :, :, 1] * (2.0 / width), base_u_y + offset[:, :, :, 0] * (2.0 / height)),
        dim=-1,
    )  # (N, G, K, Ho, Wo, 2), (x, y) order as grid_sample expects
    grid = grid.view(batch * offset_groups, taps * out_h, out_w, 2)

    grouped_input = input.reshape(batch * offset_groups, channels_per_group, height, width)
    columns = F.grid_sample(grouped_input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    del grid
    # columns: (N*G, C/G, K*Ho, Wo); its memory order is (n, g, c, k, ho, wo) = (n, c_in, k, ho, wo).

    if mask is not None:
        mask_view = mask.reshape(batch * offset_groups, 1, taps * out_h, out_w)
        needs_grad = torch.is_grad_enabled() and (
            columns.requires_grad or mask_view.requires_grad
        )
        if needs_grad:
            # Autograd keeps the unmasked samples for the mask's gradient, so a second buffer is unavoidable.
            columns = columns * mask_view
        else:
            columns.mul_(mask_view)  # inference: no second im2col-sized buffer

    # (N, C_in * K, Ho * Wo) per conv group, by views only; the contraction index is (c_in, i, j), which is
    # the memory order of weight (C_out, C_in/groups, kh, kw).
    columns = columns.reshape(batch, groups, (in_channels // groups) * taps, out_h * out_w)  # a view
    weight_matrix = weight.reshape(groups, out_channels // groups, (in_channels // groups) * taps)
    output = torch.matmul(weight_matrix, columns)  # (N, groups, C_out/groups, Ho*Wo)
    output = output.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        output = output + bias.view(1, out_channels, 1, 1)
    return output


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2), argument order and offset layout of torchvision.

    Args:
        input: ``(N, C_in, H, W)`` float tensor (any float dtype; all tensors must share it and a device).
        offset: ``(N, 2*G*kh*kw, Ho, Wo)`` sampling shifts in input pixels. Channel ``g*2K + 2k`` is ``dy``
            and ``g*2K + 2k + 1`` is ``dx`` for tap ``k = i*kw + j`` of deformable group ``g``
            (``K = kh*kw``);
            ``G`` is inferred from the channel count and must divide ``C_in`` (group ``g`` owns the
            contiguous input channels ``g*C_in/G ... (g+1)*C_in/G - 1``).
        weight: ``(C_out, C_in/groups, kh, kw)``; conv groups are inferred from ``C_in / weight.shape[1]``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation: int or ``(h, w)`` pair, as in ``F.conv2d``. ``Ho, Wo`` follow the
            ``F.conv2d`` formula.
        mask: ``(N, G*kh*kw, Ho, Wo)`` modulation in channel ``g*K + k``, already sigmoid-ed (any values are
            accepted; it is a plain multiplier). None means all ones (DCNv1).
        backend: ``"auto"`` (torchvision's kernel when torchvision imports, else the pure path), ``"torch"``
            (always the pure ``grid_sample`` path) or ``"torchvision"`` (raise if unavailable).

    Returns:
        ``(N, C_out, Ho, Wo)`` tensor of ``input``'s dtype. Sample positions are
        ``(ho*stride - padding + i*dilation + dy, wo*stride - padding + j*dilation + dx)``, read bilinearly
        with zero for every out-of-image corner. Differentiable in input, offset, mask, weight and bias
        (the offset gradient is that of bilinear interpolation, undefined exactly at integer positions).

    Memory (pure path): one im2col buffer of ``N * C_in * kh*kw * Ho*Wo`` elements (two when autograd
    needs the mask's gradient), e.g. 236 MB for N=1, C_in=256, 3x3, 160x160 in float32.

    Raises:
        RefsrError: wrong ranks, channel counts, spatial sizes, dtypes or an unknown/unavailable backend.
    """
    if backend not in BACKENDS:
        raise RefsrError(f"deform_conv2d: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    stride_pair = _pair(stride, "stride", 1)
    padding_pair = _pair(padding, "padding", 0)
    dilation_pair = _pair(dilation, "dilation", 1)
    groups, offset_groups, out_h, out_w = _validate(
        input, offset, weight, bias, mask, stride_pair, padding_pair, dilation_pair
    )

    if backend != "torch":
        op = _load_torchvision_op()
        if op is not None:
            return op(
                input, offset, weight, bias,
                stride=stride_pair, padding=padding_pair, dilation=dilation_pair, mask=mask,
            )
        if backend == "torchvision":
            raise RefsrError(
                f"deform_conv2d: backend 'torchvision' requested but torchvision does not import "
                f"({_torchvision_error}); install a torchvision matching torch or use backend='torch'"
            )
    return _deform_conv2d_torch(
        input, offset, weight, bias, mask, stride_pair, padding_pair, dilation_pair,
        groups, offset_groups, out_h, out_w,
    )


class DeformConv2d(nn.Module):
    """Modulated deformable convolution layer; the offsets and mask come from the caller.

    Holds ``weight`` ``(out_channels, in_channels/groups, kh, kw)`` and optional ``bias`` ``(out_channels,)``,
    initialised like ``nn.Conv2d``. ``forward(x, offset, mask=None)`` takes ``x`` ``(N, in_channels, H, W)``,
    ``offset`` ``(N, 2*deformable_groups*kh*kw, Ho, Wo)`` in the (dy, dx)-interleaved layout of
    :func:`deform_conv2d` and ``mask`` ``(N, deformable_groups*kh*kw, Ho, Wo)`` (sigmoid-ed) or None, and
    returns ``(N, out_channels, Ho, Wo)``. The parameter names match DCNv2 / torchvision state dicts.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        *,
        groups: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        kernel_h, kernel_w = _pair(kernel_size, "kernel_size", 1)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("deformable_groups", deformable_groups), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RefsrError(f"DeformConv2d: {name} must be a positive int, got {value!r}")
        if in_channels % deformable_groups != 0:
            raise RefsrError(
                f"DeformConv2d: in_channels {in_channels} is not divisible by deformable_groups "
                f"{deformable_groups}"
            )
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise RefsrError(
                f"DeformConv2d: in_channels {in_channels} and out_channels {out_channels} must both divide "
                "by "
                f"groups {groups}"
            )
        if backend not in BACKENDS:
            raise RefsrError(f"DeformConv2d: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_h, kernel_w)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.deformable_groups = deformable_groups
        self.groups = groups
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_h, kernel_w))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation: with zero offsets the layer starts as a plain conv would.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        expected = 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        if isinstance(offset, torch.Tensor) and offset.dim() == 4 and offset.shape[1] != expected:
            raise RefsrError(
                f"DeformConv2d: offset has {offset.shape[1]} channels, expected 2*deformable_groups*kh*kw = "
                f"{expected}"
            )
        return deform_conv2d(
            x, offset, self.weight, self.bias,
            stride=self.stride, padding=self.padding, dilation=self.dilation, mask=mask, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, deformable_groups={self.deformable_groups}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )
