"""What every torch.ops.lowp registration shares: argument checks and reshaping (dispatch: backends.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import (
    FLOAT_DTYPES,
    check_activation,
    check_k_contiguous,
    check_scale_values,
    check_shape,
    check_tensor,
    check_zero_point_values,
    fail,
)


def flat(t: Tensor | None) -> Tensor | None:
    """Per-row / per-column / per-tensor parameters as the contiguous 1-D vectors the kernels index."""
    return None if t is None else t.reshape(-1).contiguous()


def rows(x: Tensor) -> tuple[int, int]:
    """x (..., K) viewed as a matrix: (M, K) with M the product of the leading dims."""
    return math.prod(x.shape[:-1]), x.shape[-1]


def check_matrix_input(op: str, name: str, x: Tensor, dtypes) -> None:
    check_tensor(op, name, x, dtypes=dtypes)
    if x.ndim < 1:
        fail(op, f"argument '{name}' must have at least 1 dim (..., K), got a 0-d tensor")
    check_k_contiguous(op, name, x)


def _shapes(shapes) -> str:
    return " or ".join(dict.fromkeys(str(tuple(s)) for s in shapes))


def check_epilogue(op: str, x: Tensor, M: int, N: int, *, a_scale, b_scale, bias, a_zero_point, b_sum,
                   activation, out_dtype, out_scale, out_zero_point, names: dict, row_shapes=None) -> None:
    """The epilogue arguments shared by int8_mm, int8_linear and int8_conv2d (names: how the op calls a_scale etc.;
    names["row"]: what one a_scale entry covers, "row" or "image"; row_shapes: the shapes a per-row a_scale /
    a_zero_point may take, default (M,)). Per-column parameters are (N,) or one element; out_* one element."""
    dev, a_name = x.device, names["a"]
    row_shapes = ((M,),) if row_shapes is None else row_shapes
    per_row = f"per {names.get('row', 'row')} (M={M}: shape {_shapes(row_shapes)}) or one for all"
    check_activation(op, activation)
    if a_scale is not None:
        check_tensor(op, names["a_scale"], a_scale, dtypes=(torch.float32,), device=dev, device_of=a_name)
        check_shape(op, names["a_scale"], a_scale, row_shapes, f"one scale {per_row}")
    check_tensor(op, names["b_scale"], b_scale, dtypes=(torch.float32,), device=dev, device_of=a_name)
    check_shape(op, names["b_scale"], b_scale, [(N,)], f"one scale per output column (N={N}: shape ({N},)) or one "
                                                      f"for all")
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, device=dev, device_of=a_name)
        check_shape(op, "bias", bias, [(N,)], f"one value per output column (N={N}: shape ({N},))", one=False)
    if a_zero_point is not None:
        check_tensor(op, names["a_zero_point"], a_zero_point, dtypes=(torch.int32,), device=dev, device_of=a_name)
        check_shape(op, names["a_zero_point"], a_zero_point, row_shapes, f"one zero point {per_row}")
    if b_sum is not None:
        check_tensor(op, names["b_sum"], b_sum, dtypes=(torch.int32,), device=dev, device_of=a_name)
        check_shape(op, names["b_sum"], b_sum, [(N,)], f"Σ_k {names['b']}[n, k] for each of the N={N} rows: shape "
                                                       f"({N},)", one=False)
        if a_zero_point is None:
            fail(op, f"argument '{names['b_sum']}' only serves the zero-point correction; "
                     f"give '{names['a_zero_point']}' too or leave it out")
    if out_dtype == torch.int8:
        if out_scale is None:
            fail(op, "out_dtype int8 requantizes the output and needs 'out_scale' (float32, one element)")
        check_tensor(op, "out_scale", out_scale, dtypes=(torch.float32,), device=dev, device_of=a_name)
        check_shape(op, "out_scale", out_scale, (), "one element (per-tensor output scale)")
        if out_zero_point is not None:
            check_tensor(op, "out_zero_point", out_zero_point, dtypes=(torch.int32,), device=dev, device_of=a_name)
            check_shape(op, "out_zero_point", out_zero_point, (), "one element (per-tensor zero point)")
    elif out_scale is not None or out_zero_point is not None:
        fail(op, f"'out_scale' / 'out_zero_point' only apply to out_dtype int8, got out_dtype {out_dtype}")
    for name, t in ((names["a_scale"], a_scale), (names["b_scale"], b_scale), ("out_scale", out_scale)):
        check_scale_values(op, name, t)
    for name, t in ((names["a_zero_point"], a_zero_point), ("out_zero_point", out_zero_point)):
        check_zero_point_values(op, name, t)


INT8_OUT_DTYPES = (torch.int32, torch.int8) + FLOAT_DTYPES


def check_int8_output(op: str, out_dtype, scales: dict, extras: dict, activation: str) -> torch.dtype:
    """The output dtype of an int8 GEMM-like op (int8_mm, int8_conv2d): None means int32 without scales and
    float32 with them; int32 is the raw accumulator and takes no epilogue argument; other dtypes need both scales.
    scales / extras: argument name -> tensor or None."""
    if out_dtype is None:
        out_dtype = torch.int32 if all(v is None for v in scales.values()) else torch.float32
    if out_dtype not in INT8_OUT_DTYPES:
        fail(op, f"argument 'out_dtype' must be int32, int8, float16, bfloat16 or float32, got {out_dtype}",
             TypeError)
    if out_dtype == torch.int32:
        given = [n for n, v in {**scales, **extras}.items() if v is not None]
        given += ["activation"] if activation != "none" else []
        if given:
            fail(op, f"out_dtype int32 returns the raw accumulator, so {', '.join(given)} cannot apply; "
                     f"ask for a float or int8 out_dtype")
    else:
        for name, t in scales.items():
            if t is None:
                fail(op, f"argument '{name}' is required for out_dtype {str(out_dtype).removeprefix('torch.')}")
    return out_dtype


def check_static_qparams(op: str, x: Tensor, scale: Tensor, zero_point: Tensor | None) -> None:
    """A per-tensor scale (float32, one element, finite and normal) and zero point (int32, one element, in
    [-128, 127])."""
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), device=x.device, device_of="x")
    check_shape(op, "scale", scale, (), "one element (per-tensor scale)")
    if zero_point is not None:
        check_tensor(op, "zero_point", zero_point, dtypes=(torch.int32,), device=x.device, device_of="x")
        check_shape(op, "zero_point", zero_point, (), "one element (per-tensor zero point)")
    check_scale_values(op, "scale", scale)
    check_zero_point_values(op, "zero_point", zero_point)
