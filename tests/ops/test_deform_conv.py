"""refsr.ops.deform_conv2d against a literal transcription of the DCNv2 sampling rule, F.conv2d, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.ops import DeformConv2d, deform_conv2d, torchvision_available
from refsr.ops import deform_conv as deform_conv_module

DOUBLE = torch.float64


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def reference_deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation):
    """Plain-Python loops over output pixels, taps and groups; the DCNv2 CUDA kernel's rule written out.

    Works on nested lists of Python floats (float64), so nothing here shares code with the implementation.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = input.tolist()
    off = offset.tolist()
    w = weight.tolist()
    m = mask.tolist() if mask is not None else None
    b = bias.tolist() if bias is not None else None
    batch, in_ch, height, width = input.shape
    out_ch, ch_per_conv_group, kh, kw = weight.shape
    taps = kh * kw
    conv_groups = in_ch // ch_per_conv_group
    offset_groups = offset.shape[1] // (2 * taps)
    ch_per_offset_group = in_ch // offset_groups
    out_h, out_w = offset.shape[2], offset.shape[3]

    def bilinear(plane, h, w_):
        # The kernel's rule: whole sample is 0 outside (-1, H) x (-1, W); otherwise each of the four corners
        # contributes its weight times its value, or nothing when it is outside the image.
        if h <= -1 or h >= height or w_ <= -1 or w_ >= width:
            return 0.0
        h_low, w_low = math.floor(h), math.floor(w_)
        h_high, w_high = h_low + 1, w_low + 1
        lh, lw = h - h_low, w_ - w_low
        hh, hw = 1.0 - lh, 1.0 - lw

        def corner(r, c):
            return plane[r][c] if 0 <= r < height and 0 <= c < width else 0.0

        return (
            hh * hw * corner(h_low, w_low)
            + hh * lw * corner(h_low, w_high)
            + lh * hw * corner(h_high, w_low)
            + lh * lw * corner(h_high, w_high)
        )

    out = [[[[0.0] * out_w for _ in range(out_h)] for _ in range(out_ch)] for _ in range(batch)]
    for n in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                # Sample every (channel, tap) once, as the im2col kernel does.
                samples = {}
                for c in range(in_ch):
                    g = c // ch_per_offset_group
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = off[n][g * 2 * taps + 2 * k][ho][wo]
                            dx = off[n][g * 2 * taps + 2 * k + 1][ho][wo]
                            h = ho * stride[0] - padding[0] + i * dilation[0] + dy
                            w_ = wo * stride[1] - padding[1] + j * dilation[1] + dx
                            value = bilinear(x[n][c], h, w_)
                            if m is not None:
                                value *= m[n][g * taps + k][ho][wo]
                            samples[c, i, j] = value
                for co in range(out_ch):
                    cg = co // (out_ch // conv_groups)
                    total = b[co] if b is not None else 0.0
                    for cl in range(ch_per_conv_group):
                        c = cg * ch_per_conv_group + cl
                        for i in range(kh):
                            for j in range(kw):
                                total += w[co][cl][i][j] * samples[c, i, j]
                    out[n][co][ho][wo] = total
    return torch.tensor(out, dtype=DOUBLE)


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# (name, N, C_in, C_out, H, W, kh, kw, stride, padding, dilation, offset_groups, conv_groups, offset_kind)
CASES = [
    ("basic-3x3", 1, 2, 3, 5, 6, 3, 3, 1, 1, 1, 1, 1, "random"),
    ("groups2-pad0", 2, 4, 3, 5, 5, 3, 3, 1, 0, 1, 2, 1, "random"),
    ("groups3-stride2", 1, 6, 2, 7, 6, 3, 3, 2, 1, 1, 3, 1, "random"),
    ("dilation2", 1, 2, 2, 7, 7, 3, 3, 1, 2, 2, 1, 1, "random"),
    ("kernel3x1", 1, 3, 2, 5, 4, 3, 1, 1, (1, 0), 1, 3, 1, "random"),
    ("kernel2x3-pairs", 1, 2, 2, 6, 7, 2, 3, (2, 1), (0, 1), (1, 2), 2, 1, "random"),
    ("integer-offsets", 1, 2, 2, 5, 5, 3, 3, 1, 1, 1, 2, 1, "integer"),
    ("boundary-offsets", 1, 2, 2, 4, 5, 3, 3, 1, 1, 1, 1, 1, "boundary"),
    ("fully-outside", 1, 2, 2, 4, 4, 3, 3, 1, 1, 1, 2, 1, "outside"),
    ("conv-groups2", 1, 4, 4, 5, 5, 3, 3, 1, 1, 1, 2, 2, "random"),
    ("width1", 1, 2, 2, 5, 1, 3, 1, 1, (1, 0), 1, 1, 1, "random"),
]


def _make_case(n, c_in, c_out, height, width, kh, kw, stride, padding, dilation, offset_groups, conv_groups,
               offset_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    out_h = _out_size(height, kh, sh, ph, dh)
    out_w = _out_size(width, kw, sw, pw, dw)
    taps = kh * kw
    x = torch.randn(n, c_in, height, width, generator=gen, dtype=DOUBLE)
    offset_shape = (n, 2 * offset_groups * taps, out_h, out_w)
    if offset_kind == "random":
        offset = torch.randn(offset_shape, generator=gen, dtype=DOUBLE) * 1.5
    elif offset_kind == "integer":
        offset = torch.randint(-2, 3, offset_shape, generator=gen).to(DOUBLE)
    elif offset_kind == "boundary":
        # Shifts that put samples exactly on -1, 0, H-1, H (and W-1, W): the edges of the zero rule.
        offset = torch.randint(-3, 4, offset_shape, generator=gen).to(DOUBLE)
        offset += torch.tensor([0.0, 0.5, 1e-9, -1e-9], dtype=DOUBLE)[
            torch.randint(0, 4, offset_shape, generator=gen)
        ]
    elif offset_kind == "outside":
        # Far outside on one axis for half the entries, so those samples must be exactly 0.
        offset = torch.randn(offset_shape, generator=gen, dtype=DOUBLE)
        far = torch.rand(offset_shape, generator=gen) < 0.5
        offset[far] = 50.0 * torch.sign(offset[far])
    else:
        raise AssertionError(offset_kind)
    mask = torch.rand(n, offset_groups * taps, out_h, out_w, generator=gen, dtype=DOUBLE)
    weight = torch.randn(c_out, c_in // conv_groups, kh, kw, generator=gen, dtype=DOUBLE)
    bias = torch.randn(c_out, generator=gen, dtype=DOUBLE)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_literal_reference(case):
    _, n, c_in, c_out, height, width, kh, kw, stride, padding, dilation, og, cg, kind = case
    x, offset, mask, weight, bias = _make_case(
        n, c_in, c_out, height, width, kh, kw, stride, padding, dilation, og, cg, kind
    )
    got = deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask, backend="torch"
    )
    want = reference_deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation)
    assert got.shape == want.shape
    assert got.dtype == DOUBLE
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fully_outside_samples_are_zero():
    # Every tap shifted 100 pixels away: only the bias remains.
    x = torch.randn(1, 3, 5, 5, dtype=DOUBLE)
    weight = torch.randn(2, 3, 3, 3, dtype=DOUBLE)
    bias = torch.tensor([0.25, -1.5], dtype=DOUBLE)
    offset = torch.full((1, 18, 5, 5), 100.0, dtype=DOUBLE)
    out = deform_conv2d(x, offset, weight, bias, padding=1, backend="torch")
    assert torch.equal(out, bias.view(1, 2, 1, 1).expand(1, 2, 5, 5))


def test_half_pixel_shift_by_hand():
    # 1x1 kernel, one channel, dx = 0.5 everywhere: each output is the mean of a pixel and its right
    # neighbour,
    # and the last column sees half of its pixel (the right corner lies outside the image).
    x = torch.tensor([[[[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]]], dtype=DOUBLE)
    offset = torch.zeros(1, 2, 2, 3, dtype=DOUBLE)
    offset[:, 1] = 0.5
    weight = torch.ones(1, 1, 1, 1, dtype=DOUBLE)
    out = deform_conv2d(x, offset, weight, backend="torch")
    want = torch.tensor([[[[1.5, 3.0, 2.0], [12.0, 24.0, 16.0]]]], dtype=DOUBLE)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "stride, padding, dilation, kernel, conv_groups",
    [(1, 0, 1, (3, 3), 1), (2, 1, 1, (3, 3), 1), (1, 2, 2, (3, 3), 1), ((2, 1), (1, 0), (1, 2), (3, 2), 1),
     (1, 1, 1, (3, 3), 2)],
)
@pytest.mark.parametrize("offset_groups", [1, 2])
def test_zero_offset_unit_mask_equals_conv2d(stride, padding, dilation, kernel, conv_groups, offset_groups):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 9, 8, generator=gen, dtype=DOUBLE)
    weight = torch.randn(6, 4 // conv_groups, *kernel, generator=gen, dtype=DOUBLE)
    bias = torch.randn(6, generator=gen, dtype=DOUBLE)
    want = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=conv_groups)
    taps = kernel[0] * kernel[1]
    offset = torch.zeros(2, 2 * offset_groups * taps, *want.shape[2:], dtype=DOUBLE)
    mask = torch.ones(2, offset_groups * taps, *want.shape[2:], dtype=DOUBLE)
    got = deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask, backend="torch"
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_mask_none_equals_mask_of_ones():
    x, offset, _, weight, bias = _make_case(2, 4, 3, 6, 5, 3, 3, 1, 1, 1, 2, 1, "random")
    ones = torch.ones(2, 18, 6, 5, dtype=DOUBLE)
    without = deform_conv2d(x, offset, weight, bias, padding=1, backend="torch")
    with_ones = deform_conv2d(x, offset, weight, bias, padding=1, mask=ones, backend="torch")
    torch.testing.assert_close(without, with_ones, rtol=0, atol=1e-14)


def test_offset_shift_moves_samples():
    # A constant integer shift of all taps equals the plain convolution of the shifted (zero-filled) image,
    # which pins the (dy, dx) order: swapping them would shift along the other axis.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 6, 7, generator=gen, dtype=DOUBLE)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=DOUBLE)
    offset = torch.zeros(1, 18, 6, 7, dtype=DOUBLE)
    offset[:, 0::2] = 1.0  # dy = +1: sample one row further down
    offset[:, 1::2] = -2.0  # dx = -2: two columns to the left
    # Tap (i, j) of output (ho, wo) now reads x[ho + i, wo + j - 3]: a plain convolution of x zero-padded by 3
    # on the left and 2 at the bottom (cropped to the width a 6x7 output needs).
    padded = F.pad(x, (3, 0, 0, 2))[..., :9]
    want = F.conv2d(padded, weight)
    got = deform_conv2d(x, offset, weight, padding=1, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _fractional_case():
    # Offsets whose fractional part stays in [0.15, 0.85]: bilinear sampling is smooth there (it has kinks at
    # integer positions), so finite differences are valid. Some samples land partly outside the image.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 4, 5, generator=gen, dtype=DOUBLE)
    whole = torch.randint(-2, 3, (1, 2 * 2 * 6, 2, 5), generator=gen).to(DOUBLE)
    offset = whole + 0.15 + 0.7 * torch.rand(whole.shape, generator=gen, dtype=DOUBLE)
    mask = torch.rand(1, 2 * 6, 2, 5, generator=gen, dtype=DOUBLE)
    weight = torch.randn(3, 4, 2, 3, generator=gen, dtype=DOUBLE)
    bias = torch.randn(3, generator=gen, dtype=DOUBLE)
    return x, offset, mask, weight, bias


def test_gradcheck_all_inputs():
    # fast_mode compares a random projection of the full Jacobian (all five inputs at once), which keeps this
    # case with two deformable groups, a 2x3 kernel, padding and dilation affordable.
    tensors = tuple(t.requires_grad_() for t in _fractional_case())

    def function(x, offset, mask, weight, bias):
        return deform_conv2d(
            x, offset, weight, bias, stride=(1, 1), padding=(0, 1), dilation=(2, 1), mask=mask,
            backend="torch",
        )

    assert torch.autograd.gradcheck(function, tensors, eps=1e-6, atol=1e-8, fast_mode=True)


def test_gradcheck_full_jacobian_small():
    # Every Jacobian entry, on a case small enough for the slow mode: 2x2 kernel, stride 2, padding 1.
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 3, 3, generator=gen, dtype=DOUBLE)
    whole = torch.randint(-1, 2, (1, 8, 2, 2), generator=gen).to(DOUBLE)
    offset = whole + 0.15 + 0.7 * torch.rand(whole.shape, generator=gen, dtype=DOUBLE)
    mask = torch.rand(1, 4, 2, 2, generator=gen, dtype=DOUBLE)
    weight = torch.randn(2, 2, 2, 2, generator=gen, dtype=DOUBLE)
    bias = torch.randn(2, generator=gen, dtype=DOUBLE)
    tensors = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))

    def function(x, offset, mask, weight, bias):
        return deform_conv2d(x, offset, weight, bias, stride=2, padding=1, mask=mask, backend="torch")

    assert torch.autograd.gradcheck(function, tensors, eps=1e-6, atol=1e-8)


def test_gradients_reach_every_argument():
    x, offset, mask, weight, bias = (t.requires_grad_() for t in _fractional_case())
    out = deform_conv2d(x, offset, weight, bias, padding=(0, 1), dilation=(2, 1), mask=mask, backend="torch")
    out.square().sum().backward()
    for name, tensor in (("x", x), ("offset", offset), ("mask", mask), ("weight", weight), ("bias", bias)):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


def test_no_grad_inplace_mask_matches_autograd_path():
    # Without autograd the mask is applied in place; the result must be the same as with autograd on.
    x, offset, mask, weight, bias = _fractional_case()
    with torch.no_grad():
        fast = deform_conv2d(
            x, offset, weight, bias, padding=(0, 1), dilation=(2, 1), mask=mask, backend="torch"
        )
    mask_grad = mask.clone().requires_grad_()
    slow = deform_conv2d(
        x, offset, weight, bias, padding=(0, 1), dilation=(2, 1), mask=mask_grad, backend="torch"
    )
    assert torch.equal(fast, slow.detach())


def test_float32_close_to_float64():
    x, offset, mask, weight, bias = _make_case(1, 8, 4, 9, 9, 3, 3, 1, 1, 1, 4, 1, "random")
    want = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torch")
    got = deform_conv2d(
        *(t.float() for t in (x, offset, weight, bias)), padding=1, mask=mask.float(), backend="torch"
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torchvision_available(), reason="torchvision does not import here")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torchvision_agreement(case):
    _, n, c_in, c_out, height, width, kh, kw, stride, padding, dilation, og, cg, kind = case
    x, offset, mask, weight, bias = _make_case(
        n, c_in, c_out, height, width, kh, kw, stride, padding, dilation, og, cg, kind
    )
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, mask=mask)
    ours = deform_conv2d(x, offset, weight, bias, backend="torch", **kwargs)
    theirs = deform_conv2d(x, offset, weight, bias, backend="torchvision", **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.skipif(torchvision_available(), reason="torchvision imports here")
def test_torchvision_backend_unavailable_raises():
    x, offset, mask, weight, bias = _make_case(1, 2, 2, 4, 4, 3, 3, 1, 1, 1, 1, 1, "random")
    with pytest.raises(RefsrError, match="torchvision"):
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torchvision")
    # "auto" falls back to the pure path silently.
    auto = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    pure = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torch")
    torch.testing.assert_close(auto, pure)


def test_broken_torchvision_import_is_cached_as_unavailable(monkeypatch):
    # A torchvision that raises something other than ImportError on import must just disable the fast path.
    import builtins

    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(deform_conv_module, "_torchvision_op", deform_conv_module._UNSET)
    monkeypatch.setattr(builtins, "__import__", broken_import)
    assert deform_conv_module.torchvision_available() is False
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert deform_conv_module.torchvision_available() is False  # cached: not retried
    with pytest.raises(RefsrError, match="RuntimeError"):
        x, offset, mask, weight, bias = _make_case(1, 2, 2, 4, 4, 3, 3, 1, 1, 1, 1, 1, "random")
        deform_conv2d(x, offset, weight, bias, padding=1, backend="torchvision")


def _valid_arguments():
    x = torch.randn(2, 4, 6, 6)
    offset = torch.randn(2, 2 * 2 * 9, 6, 6)  # 2 deformable groups
    weight = torch.randn(5, 4, 3, 3)
    bias = torch.randn(5)
    mask = torch.rand(2, 2 * 9, 6, 6)
    return x, offset, weight, bias, mask


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(offset=torch.randn(2, 17, 6, 6)), "offset has 17 channels"),
        (lambda a: a.update(offset=torch.randn(2, 54, 6, 6)), "do not split into 3 deformable groups"),
        (lambda a: a.update(mask=torch.rand(2, 9, 6, 6)), "mask has 9 channels"),
        (lambda a: a.update(offset=torch.randn(2, 36, 5, 6)), "offset is 5x6 but the output is 6x6"),
        (lambda a: a.update(mask=torch.rand(2, 18, 6, 7)), "mask is 6x7 but the output is 6x6"),
        (lambda a: a.update(offset=torch.randn(1, 36, 6, 6)), "offset batch 1"),
        (lambda a: a.update(input=torch.randn(4, 6, 6)), "input must be 4-D"),
        (lambda a: a.update(weight=torch.randn(5, 3, 3, 3)), "not a multiple of weight.shape"),
        (lambda a: a.update(bias=torch.randn(4)), r"bias must have shape \(5,\)"),
        (lambda a: a.update(offset=a["offset"].double()), "dtype"),
        (lambda a: a.update(input=torch.randn(2, 4, 1, 1), padding=0), "too small"),
        (lambda a: a.update(stride=0), "stride must be >= 1"),
        (lambda a: a.update(padding=(1, 2, 3)), "padding must be an int or a pair"),
        (lambda a: a.update(backend="cuda"), "unknown backend"),
    ],
)
def test_bad_arguments_raise_one_line_errors(change, message):
    x, offset, weight, bias, mask = _valid_arguments()
    arguments = dict(input=x, offset=offset, weight=weight, bias=bias, mask=mask, padding=1, backend="torch")
    deform_conv2d(**arguments)  # the unchanged arguments are valid
    change(arguments)
    with pytest.raises(RefsrError, match=message) as info:
        deform_conv2d(**arguments)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_function(bias):
    torch.manual_seed(4)
    layer = DeformConv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), deformable_groups=3,
                         bias=bias, backend="torch").double()
    assert tuple(layer.weight.shape) == (4, 6, 3, 2)
    assert (layer.bias is not None) == bias
    x = torch.randn(2, 6, 7, 8, dtype=DOUBLE)
    offset = torch.randn(2, 2 * 3 * 6, 4, 6, dtype=DOUBLE)
    mask = torch.rand(2, 3 * 6, 4, 6, dtype=DOUBLE)
    got = layer(x, offset, mask)
    want = reference_deform_conv2d(x, offset, layer.weight.detach(), layer.bias, mask, (2, 1), (1, 0), (1, 2))
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-12)
    got.sum().backward()
    assert layer.weight.grad is not None


def test_module_checks_its_deformable_groups():
    layer = DeformConv2d(4, 4, 3, padding=1, deformable_groups=2)
    x = torch.randn(1, 4, 5, 5)
    layer(x, torch.zeros(1, 36, 5, 5))
    with pytest.raises(RefsrError, match="expected 2\\*deformable_groups\\*kh\\*kw = 36"):
        layer(x, torch.zeros(1, 18, 5, 5))  # a valid offset for 1 group, but not this layer's 2
    with pytest.raises(RefsrError, match="deformable_groups"):
        DeformConv2d(6, 4, 3, deformable_groups=4)


def test_module_conv_groups_and_zero_offset_is_conv2d():
    torch.manual_seed(5)
    layer = DeformConv2d(4, 6, 3, padding=1, groups=2, backend="torch").double()
    x = torch.randn(1, 4, 5, 6, dtype=DOUBLE)
    want = F.conv2d(x, layer.weight, layer.bias, padding=1, groups=2)
    got = layer(x, torch.zeros(1, 18, 5, 6, dtype=DOUBLE))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_channels_last_and_strided_inputs():
    # Layout must not matter: channels_last input/mask and a permuted (non-contiguous) offset give the same
    # result.
    x, offset, mask, weight, bias = _make_case(2, 4, 3, 6, 5, 3, 3, 1, 1, 1, 2, 1, "random")
    want = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torch")
    strided_offset = offset.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not strided_offset.is_contiguous()
    got = deform_conv2d(
        x.to(memory_format=torch.channels_last), strided_offset, weight, bias, padding=1,
        mask=mask.to(memory_format=torch.channels_last), backend="torch",
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
