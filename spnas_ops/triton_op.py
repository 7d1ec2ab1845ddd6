"""Triton backend of the superkernel op: kernels, launchers and op registration in one place.

    y, d = triton_op.masked_dwconv(x, weight, thresholds, scale, stride, skippable)

Split of the work (SPEC section 1):
  * The (C, 25)-sized part -- the masked weight w_eff, the decisions d and, in the backward,
    the gradients of the weight and thresholds from dL/dw_eff and dL/dd -- derives no formula
    of its own. Where the compiled library has kernels for x's device, it is the compiled
    ops' `spnas::superkernel_weight(_backward)` (csrc/superkernel.h; on a GPU the CUDA
    backend's one-block kernels: one launch forward, three backward). Otherwise it is the
    oracle's `reference.masked_weight` in fp32 (fp64 for fp64 inputs), differentiated with
    torch.func.vjp: some sixty small ops forward and a hundred and twenty backward, each
    dispatched from Python, which cost more than the convolution on every measured shape
    (docs/gpu.md).
  * The activation-sized part is two Triton kernels. The forward reads x once and writes y once.
    The backward reads x and dy once and writes dx once, plus one fp32 row of dL/dw_eff partial
    sums per program; a fixed-order torch sum over those rows gives dL/dw_eff
    (deterministic: no float atomics).

Tiles. A program owns a tile of BLOCK_P output pixels (flattened over (n, oh, ow), so tiles cross
image borders and small planes such as 7x7 still make full tiles) by BLOCK_C channels. The tile
is laid out so that the axis contiguous in memory is the last one, which Triton spreads across
neighbouring threads: [pixels, channels] for channels_last, [channels, pixels] for NCHW. Any
strides work, so x and dy are never copied.

Backward ownership. Output pixel (oh, ow) also owns the input pixels (oh*s + a, ow*s + b),
0 <= a, b < s. Its program computes dx there as a gather, dx[i] = sum over taps k whose
parity matches of dy[(i + 2 - k) / s] * w_eff[k], so every dx element is written exactly once
and the dy reads stay next to the tile the program already touches.

Registered as the custom ops spnas::masked_dwconv_triton and spnas::masked_dwconv_triton_backward,
with the same schema as the compiled spnas::masked_dwconv / masked_dwconv_backward, a fake kernel
and an autograd formula, so torch.compile(fullgraph=True) traces through it.

Triton is optional: this module imports without it (spnas_ops imports it only on demand). The
kernels are decorated on first use, so TRITON_INTERPRET=1 (Triton's CPU interpreter) only has to
be set before the first call.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations.
import contextlib
import functools
import os
from types import SimpleNamespace

import torch
from torch import Tensor

from . import reference
from ._library import compiled_backends
from .registration import (accumulation_dtype, fake_backward, fake_forward, memory_format,
                           output_size, register_autograd)

try:  # optional: without Triton, is_available() is False and nothing below is launched
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

# The kernels use only Triton builtins (tl.full, tl.reduce, not the library functions tl.zeros,
# tl.sum): the library is decorated when triton is first imported, so with it the interpreter
# works only if TRITON_INTERPRET=1 was set before that import. tl.reduce with Triton's own add
# combiner is what tl.sum lowers to, and the interpreter recognises it (a numpy sum).
_sum_combine = getattr(getattr(tl, "standard", None), "_sum_combine", None)

TAPS = 25
_INT32_LIMIT = 2**31


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def is_available() -> bool:
    """True when Triton imports and can run here: a CUDA device, or its CPU interpreter
    (TRITON_INTERPRET=1)."""
    return triton is not None and (torch.cuda.is_available() or _interpreting())


# Kernel bodies, defined only where Triton imports. They are plain functions here and become
# Triton kernels in `build_kernels`: `triton.jit` decides at decoration time whether a kernel is
# compiled or interpreted, so decorating on first use lets TRITON_INTERPRET be set late.
#
# Both kernels start from the same tile: BLOCK_P output pixels p = (n, oh, ow) by BLOCK_C
# channels, as broadcastable 2-D index tensors, with the memory-contiguous axis last
# (PIXEL_AXIS = 0: [pixels, channels] for channels_last; 1: [channels, pixels] for NCHW).
# WIDE promotes the batch offset to 64 bits when some offset does not fit in 32.
# The weights arrive as w_eff (25, C) in the accumulation dtype ACC, so that one tap's weights
# for a channel block are one contiguous load.
if triton is not None:

    def _superkernel_forward(
            x_ptr, w_ptr, y_ptr,
            P, C, H, W, HWo, Wo,
            sxn, sxc, sxh, sxw, syn, syc, syh, syw,
            STRIDE: tl.constexpr, PIXEL_AXIS: tl.constexpr, WIDE: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        # y[n, c, oh, ow] = sum_k w_eff[k, c] * x[n, c, oh*s + kh - 2, ow*s + kw - 2], zero padding.
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        if PIXEL_AXIS == 0:
            p2 = p[:, None]
            c2 = c[None, :]
        else:
            p2 = p[None, :]
            c2 = c[:, None]
        n = p2 // HWo
        oh = (p2 % HWo) // Wo
        ow = (p2 % HWo) % Wo
        if WIDE:
            n = n.to(tl.int64)
        valid = (p2 < P) & (c2 < C)

        x_base = n * sxn + c2 * sxc
        acc = tl.full(valid.shape, 0.0, ACC)
        for kh in tl.static_range(5):
            ih = oh * STRIDE + (kh - 2)
            row_inside = valid & (ih >= 0) & (ih < H)
            for kw in tl.static_range(5):
                iw = ow * STRIDE + (kw - 2)
                inside = row_inside & (iw >= 0) & (iw < W)
                xv = tl.load(x_ptr + x_base + ih * sxh + iw * sxw, mask=inside, other=0.0)
                wv = tl.load(w_ptr + (kh * 5 + kw) * C + c2, mask=c2 < C, other=0.0)
                acc += xv.to(ACC) * wv
        tl.store(y_ptr + n * syn + c2 * syc + oh * syh + ow * syw,
                 acc.to(y_ptr.dtype.element_ty), mask=valid)

    def _superkernel_backward(
            x_ptr, dy_ptr, w_ptr, dx_ptr, partial_ptr,
            P, C, H, W, HWo, Ho, Wo,
            sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, sgn, sgc, sgh, sgw,
            STRIDE: tl.constexpr, PIXEL_AXIS: tl.constexpr, WIDE: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        # One pass over the tile: its share of dL/dw_eff (one partial row per program along the
        # pixels; partial_ptr is (rows, 25, C)), and dx on the input pixels the tile owns.
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        if PIXEL_AXIS == 0:
            p2 = p[:, None]
            c2 = c[None, :]
        else:
            p2 = p[None, :]
            c2 = c[:, None]
        n = p2 // HWo
        oh = (p2 % HWo) // Wo
        ow = (p2 % HWo) % Wo
        row = tl.program_id(0)
        if WIDE:
            n = n.to(tl.int64)
            row = row.to(tl.int64)
        valid = (p2 < P) & (c2 < C)

        x_base = n * sxn + c2 * sxc
        dy_base = n * sdn + c2 * sdc
        dy = tl.load(dy_ptr + dy_base + oh * sdh + ow * sdw, mask=valid, other=0.0).to(ACC)

        # dL/dw_eff[k, c] = sum over the tile's pixels of dy * (x at tap k): the forward's gather.
        for kh in tl.static_range(5):
            ih = oh * STRIDE + (kh - 2)
            row_inside = valid & (ih >= 0) & (ih < H)
            for kw in tl.static_range(5):
                iw = ow * STRIDE + (kw - 2)
                inside = row_inside & (iw >= 0) & (iw < W)
                xv = tl.load(x_ptr + x_base + ih * sxh + iw * sxw, mask=inside, other=0.0)
                g = tl.reduce(dy * xv.to(ACC), PIXEL_AXIS, _sum_combine)
                tl.store(partial_ptr + (row * 25 + kh * 5 + kw) * C + c, g, mask=c < C)

        # dx at input pixel (oh*s + a, ow*s + b): the output pixels whose window covers it with
        # tap (kh, kw) are (oh + (a + 2 - kh) / s, ow + (b + 2 - kw) / s), when s divides both.
        for a in tl.static_range(STRIDE):
            for b in tl.static_range(STRIDE):
                acc = tl.full(valid.shape, 0.0, ACC)
                for kh in tl.static_range(5):
                    if (a + 2 - kh) % STRIDE == 0:
                        gh = oh + (a + 2 - kh) // STRIDE
                        row_inside = valid & (gh >= 0) & (gh < Ho)
                        for kw in tl.static_range(5):
                            if (b + 2 - kw) % STRIDE == 0:
                                gw = ow + (b + 2 - kw) // STRIDE
                                inside = row_inside & (gw >= 0) & (gw < Wo)
                                g = tl.load(dy_ptr + dy_base + gh * sdh + gw * sdw, mask=inside,
                                            other=0.0)
                                wv = tl.load(w_ptr + (kh * 5 + kw) * C + c2, mask=c2 < C,
                                             other=0.0)
                                acc += g.to(ACC) * wv
                ih = oh * STRIDE + a
                iw = ow * STRIDE + b
                tl.store(dx_ptr + n * sgn + c2 * sgc + ih * sgh + iw * sgw,
                         acc.to(dx_ptr.dtype.element_ty), mask=valid & (ih < H) & (iw < W))


def build_kernels() -> SimpleNamespace:
    """The Triton kernels, compiled or interpreted as TRITON_INTERPRET says right now."""
    if triton is None:
        raise ImportError("masked_dwconv: the triton backend needs the `triton` package")
    return SimpleNamespace(forward=triton.jit(_superkernel_forward),
                           backward=triton.jit(_superkernel_backward))


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> SimpleNamespace:
    return build_kernels()


# --- launchers ------------------------------------------------------------------------------

def _max_offset(t: Tensor) -> int:
    return sum((size - 1) * abs(step) for size, step in zip(t.shape, t.stride()))


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _next_power_of_2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()


def _tile_config(x: Tensor, pixels: int, backward: bool) -> tuple[int, int, int, int]:
    """(PIXEL_AXIS, BLOCK_P, BLOCK_C, num_warps) for x's layout.

    Tiles hold 4 elements per thread: with 25 taps unrolled, Triton keeps every tap's load in
    flight, and larger tiles spill registers (checked by compiling for sm_90: ptxas reports
    150-180 registers and no stack at these sizes, 255 and spills at twice the size).
    channels_last: 32 (forward) / 16 (backward) contiguous channels by 16 / 64 pixels. NCHW:
    pixels only (2 / 1 channels by 512 / 1024 pixels). The backward wants many pixels per tile
    because each program writes one partial row: 25 / BLOCK_P floats per activation element.
    """
    c = x.shape[1]
    pixel_axis = 0 if x.stride(1) == 1 and c > 1 else 1
    if pixel_axis == 0:
        block_p, block_c = (64, 16) if backward else (16, 32)
    else:
        block_p, block_c = (1024, 1) if backward else (512, 2)
    block_c = min(block_c, _next_power_of_2(c))
    block_p = max(16, min(block_p, _next_power_of_2(pixels)))
    return pixel_axis, block_p, block_c, 8 if backward else 4


def _check_device(x: Tensor) -> None:
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError(f"masked_dwconv: the triton backend runs on CUDA tensors (or on the "
                           f"CPU with TRITON_INTERPRET=1), got x on {x.device}")


def _device_guard(x: Tensor):
    # Triton launches on the current device; make it x's.
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _weight_taps(w_eff: Tensor) -> Tensor:
    # (C, 1, 5, 5) -> (25, C): a tap's weights for a channel block are one contiguous load.
    return w_eff.reshape(w_eff.shape[0], TAPS).t().contiguous()


def launch_forward(x: Tensor, w_eff: Tensor, stride: int) -> Tensor:
    """y = depthwise_conv2d(x, w_eff, stride, padding=2); w_eff (C, 1, 5, 5) in the accumulation
    dtype. y has x's dtype and the output memory format rule."""
    _check_device(x)
    n, c, h, w = x.shape
    ho, wo = output_size(h, stride), output_size(w, stride)
    y = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device,
                    memory_format=memory_format(x))
    pixels = n * ho * wo
    if y.numel() == 0:
        return y
    k = _kernels(_interpreting())
    pixel_axis, block_p, block_c, warps = _tile_config(x, pixels, backward=False)
    wide = max(_max_offset(x), _max_offset(y)) >= _INT32_LIMIT
    grid = (_cdiv(pixels, block_p), _cdiv(c, block_c))
    with _device_guard(x):
        k.forward[grid](
            x, _weight_taps(w_eff), y, pixels, c, h, w, ho * wo, wo,
            *x.stride(), *y.stride(),
            STRIDE=stride, PIXEL_AXIS=pixel_axis, WIDE=wide, BLOCK_P=block_p, BLOCK_C=block_c,
            ACC=_tl_dtype(w_eff.dtype), num_warps=warps)
    return y


def launch_backward(grad_y: Tensor, x: Tensor, w_eff: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """(dx, dL/dw_eff) with dL/dw_eff (C, 1, 5, 5) in w_eff's (accumulation) dtype."""
    _check_device(x)
    n, c, h, w = x.shape
    ho, wo = output_size(h, stride), output_size(w, stride)
    dx = torch.empty_like(x, memory_format=memory_format(x))
    pixels = n * ho * wo
    if pixels == 0 or c == 0:
        return dx.zero_(), torch.zeros_like(w_eff)
    k = _kernels(_interpreting())
    pixel_axis, block_p, block_c, warps = _tile_config(x, pixels, backward=True)
    programs = _cdiv(pixels, block_p)
    partial = torch.empty((programs, TAPS, c), dtype=w_eff.dtype, device=x.device)
    wide = max(_max_offset(x), _max_offset(grad_y), _max_offset(dx),
               partial.numel()) >= _INT32_LIMIT
    with _device_guard(x):
        k.backward[(programs, _cdiv(c, block_c))](
            x, grad_y, _weight_taps(w_eff), dx, partial, pixels, c, h, w, ho * wo, ho, wo,
            *x.stride(), *grad_y.stride(), *dx.stride(),
            STRIDE=stride, PIXEL_AXIS=pixel_axis, WIDE=wide, BLOCK_P=block_p, BLOCK_C=block_c,
            ACC=_tl_dtype(w_eff.dtype), num_warps=warps)
    # The epilogue: a fixed-order reduction over the per-program rows.
    grad_w_eff = partial.sum(dim=0).t().reshape(w_eff.shape)
    return dx, grad_w_eff


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# --- the (C, 25) part: the compiled ops where built for the device, else the oracle ---------

def _compiled_superkernel(device: torch.device) -> bool:
    return device.type in compiled_backends()


def _superkernel_inputs(weight: Tensor, thresholds: Tensor, scale: Tensor):
    acc = accumulation_dtype(weight.dtype)
    return weight.detach().to(acc), thresholds.detach().to(acc), scale.detach().to(acc)


def superkernel_weight(weight: Tensor, thresholds: Tensor, scale: Tensor,
                       skippable: bool) -> tuple[Tensor, Tensor]:
    """(w_eff in the accumulation dtype, d in thresholds' dtype)."""
    if _compiled_superkernel(weight.device):
        return torch.ops.spnas.superkernel_weight(weight, thresholds, scale, skippable)
    w, t, r = _superkernel_inputs(weight, thresholds, scale)
    w_eff, d = reference.masked_weight(w, t, r, skippable)
    return w_eff, d.to(thresholds.dtype)


def superkernel_vjp(weight: Tensor, thresholds: Tensor, scale: Tensor, skippable: bool):
    """(w_eff, pullback) with pullback(dL/dw_eff, dL/dd) -> (dL/dweight, dL/dthresholds) in
    weight's and thresholds' dtypes."""
    if _compiled_superkernel(weight.device):
        w_eff, _ = torch.ops.spnas.superkernel_weight(weight, thresholds, scale, skippable)

        def compiled(grad_w_eff: Tensor, grad_d: Tensor) -> tuple[Tensor, Tensor]:
            return torch.ops.spnas.superkernel_weight_backward(grad_w_eff, grad_d, weight,
                                                               thresholds, scale, skippable)
        return w_eff, compiled
    w, t, r = _superkernel_inputs(weight, thresholds, scale)
    # vjp through the oracle's masked weight: the primal gives w_eff for the kernel, the
    # pullback turns (dL/dw_eff, dL/dd) into (dL/dweight, dL/dthresholds).
    (w_eff, _), pullback = torch.func.vjp(
        lambda w_, t_: reference.masked_weight(w_, t_, r, skippable), w, t)

    def oracle(grad_w_eff: Tensor, grad_d: Tensor) -> tuple[Tensor, Tensor]:
        grad_w, grad_t = pullback((grad_w_eff.to(w.dtype), grad_d.detach().to(w.dtype).reshape(3)))
        return grad_w.to(weight.dtype), grad_t.to(thresholds.dtype)
    return w_eff, oracle


# --- op registration ------------------------------------------------------------------------

@torch.library.custom_op("spnas::masked_dwconv_triton", mutates_args=())
def _masked_dwconv_op(x: Tensor, weight: Tensor, thresholds: Tensor, scale: Tensor,
                      stride: int, skippable: bool) -> tuple[Tensor, Tensor]:
    w_eff, d = superkernel_weight(weight, thresholds, scale, skippable)
    return launch_forward(x, w_eff, stride), d


_masked_dwconv_op.register_fake(fake_forward)


@torch.library.custom_op("spnas::masked_dwconv_triton_backward", mutates_args=())
def _masked_dwconv_backward_op(grad_y: Tensor, grad_d: Tensor, x: Tensor, weight: Tensor,
                               thresholds: Tensor, scale: Tensor, stride: int,
                               skippable: bool) -> tuple[Tensor, Tensor, Tensor]:
    w_eff, pullback = superkernel_vjp(weight, thresholds, scale, skippable)
    dx, grad_w_eff = launch_backward(grad_y, x, w_eff, stride)
    grad_w, grad_t = pullback(grad_w_eff, grad_d)
    return dx, grad_w, grad_t


_masked_dwconv_backward_op.register_fake(fake_backward)
register_autograd(_masked_dwconv_op, _masked_dwconv_backward_op)


def masked_dwconv(x: Tensor, weight: Tensor, thresholds: Tensor, scale: Tensor, stride: int,
                  skippable: bool) -> tuple[Tensor, Tensor]:
    """The superkernel op on the Triton backend; inputs already checked by spnas_ops."""
    return torch.ops.spnas.masked_dwconv_triton(x, weight, thresholds, scale, stride, skippable)
