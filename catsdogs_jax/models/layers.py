"""Layer forms a model is built from: plain Flax, or forms XLA:CPU runs fast.

XLA's CPU backend runs a stride-1 convolution several times faster when the input
is padded by kernel - 1 on every side ("full" padding) than with 'VALID' or
'SAME', and its kernel-gradient convolution and `reduce_window` max-pool gradient
(select-and-scatter) are slow. The CPU forms compute exactly what
`lax.conv_general_dilated` and `nn.max_pool` compute, but through custom VJPs:

- convolution forward and input gradient: one full-padded convolution, sliced to
  the requested output;
- kernel gradient: for each kernel offset, a matmul of the shifted input with the
  output gradient, summed over the batch, over blocks of rows that fit in cache;
- depthwise convolution (groups == channels, any stride): a sum of shifted,
  scaled copies of the input, one fused loop instead of a grouped convolution;
- 1x1 convolution (any stride, no padding): the strided input times the kernel, one
  matmul over channels, whose gradients autodiff makes matmuls too (XLA:CPU runs a
  1x1 convolution as a slow general one: 64->64 channels at 64x64, batch 32, forward
  and backward, 221 ms as a convolution, 47 ms as the matmul);
- non-overlapping max-pool (window == stride): the forward pass keeps which tap of
  each window was the first maximum (the one XLA's select-and-scatter picks) in one
  byte, and the gradient puts the output gradient there in one elementwise pass,
  which XLA fuses with the gradient of a ReLU before the pool (so models write the
  ReLU and the pool apart, as the papers do, at no cost);
- overlapping or padded max-pool (e.g. 3x3, stride 2, 'SAME'): the maximum over the
  window's strided slices of the -inf-padded input, keeping the winning tap (the
  first maximum again) in one byte; the gradient spreads each tap's share back with
  interior padding and sums them, so where windows overlap gradients add, as
  select-and-scatter's do (3x3/2 'SAME' at 64x64x64, batch 32: 169 ms through
  reduce_window and select-and-scatter, 42 ms so; the small Xception's train step at
  128 px, batch 32: 3.8 s before these two forms, 2.5 s with them).

A model takes a `layers: LayerForms` field (`PLAIN`, plain Flax, by default) and
builds its convolutions with `self.layers.conv` (as `nn.Conv`) and its pools with
`self.layers.max_pool` (as `nn.max_pool`). `LAYER_FORMS` names the forms;
`layer_forms('auto')`, called when the model is created (`create_model`), picks
`CPU` when JAX's default backend is the CPU: GPUs keep the plain forms, which cuDNN
runs well. The CPU forms compute layers they do not fit in the plain way; they fit
convolutions 2-D, NHWC, stride 1, no dilation, no groups, any padding ('VALID',
'SAME' or explicit); 1x1 convolutions 2-D, NHWC, any stride, no dilation, no groups,
padding that is zero ('VALID', 'SAME', which pads a 1x1 kernel by nothing, or explicit
zeros); depthwise convolutions 2-D, NHWC, any stride and padding, no dilation; 2-D
floating-point max-pooling with any window, stride and padding where every window
holds an input element (padding less than the window) and has at most 127 taps.
Inputs holding -inf are the one place the pools may differ: a window whose only
maximum is -inf may send its gradient to the padding, which select-and-scatter skips.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.linear import canonicalize_padding
from jax import lax

from catsdogs_jax.models import onednn
from catsdogs_jax.registry import lookup

_BLOCK_BYTES = 1 << 20  # inputs of one block of the kernel gradient (measured best on this CPU)


# ----- convolution


def _full_conv(x, w, out_lo, out_size):
  """Correlation of x with w under full padding (k-1), sliced to rows/cols [lo, lo+size)."""
  kh, kw = w.shape[:2]
  y = lax.conv_general_dilated(
      x, w, (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return y[:, out_lo[0] : out_lo[0] + out_size[0], out_lo[1] : out_lo[1] + out_size[1]]


def _out_size(size, k, lo, hi):
  return size + lo + hi - k + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, w, padding):
  """Stride-1 NHWC x HWIO correlation with explicit padding ((lo, hi), (lo, hi))."""
  return _conv2d_fwd(x, w, padding)[0]


def _conv2d_fwd(x, w, padding):
  (plo_h, phi_h), (plo_w, phi_w) = padding
  kh, kw = w.shape[:2]
  size = (_out_size(x.shape[1], kh, plo_h, phi_h), _out_size(x.shape[2], kw, plo_w, phi_w))
  # Output row r of the padded conv is row r + (k - 1 - lo) of the full one.
  y = _full_conv(x, w, (kh - 1 - plo_h, kw - 1 - plo_w), size)
  return y, (x, w)


def _conv2d_bwd(padding, residuals, dy):
  x, w = residuals
  (plo_h, phi_h), (plo_w, phi_w) = padding
  kh, kw = w.shape[:2]
  # dx: dy correlated with the kernel rotated by 180 degrees, in and out swapped.
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = _full_conv(dy, w_t, (plo_h, plo_w), x.shape[1:3])
  xp = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)))
  return dx.astype(x.dtype), _kernel_grad(xp, dy, w.shape).astype(w.dtype)


def _taps(xp, dy, kh: int, kw: int):
  """[kh * kw, C, O]: per kernel offset, shifted input (x) dy summed over batch and positions."""
  _, out_h, out_w, o = dy.shape
  dy_flat = dy.reshape(-1, o)
  return jnp.stack(
      [
          lax.dot_general(
              xp[:, i : i + out_h, j : j + out_w].reshape(-1, xp.shape[-1]),
              dy_flat,
              (((0,), (0,)), ((), ())),
              preferred_element_type=jnp.float32,
          )
          for i in range(kh)
          for j in range(kw)
      ]
  )


def _kernel_grad(xp, dy, kernel_shape):
  """dw[i, j] = sum over batch and positions of x_padded shifted by (i, j) (x) dy.

  Summed over blocks of output rows small enough to stay in cache (a scan): each
  tap's matmul then runs several times faster than over whole images. Blocks cut
  rows, not the batch, so a batch sharded over devices stays where it is.
  """
  kh, kw, c, o = kernel_shape
  batch, out_h, out_w, _ = dy.shape
  row_bytes = batch * (xp.shape[2] * c + out_w * o) * dy.dtype.itemsize
  rows = max(1, min(out_h, _BLOCK_BYTES // row_bytes))
  blocks = -(-out_h // rows)
  if blocks == 1:  # small images: no loop to compile
    return _taps(xp, dy, kh, kw).reshape(kernel_shape)
  # Zero rows of dy (and the input rows they would meet) add nothing.
  dy = jnp.pad(dy, ((0, 0), (0, blocks * rows - out_h), (0, 0), (0, 0)))
  xp = jnp.pad(xp, ((0, 0), (0, blocks * rows + kh - 1 - xp.shape[1]), (0, 0), (0, 0)))

  def block(total, k):
    x_rows = lax.dynamic_slice_in_dim(xp, k * rows, rows + kh - 1, axis=1)
    dy_rows = lax.dynamic_slice_in_dim(dy, k * rows, rows, axis=1)
    return total + _taps(x_rows, dy_rows, kh, kw), None

  total, _ = lax.scan(block, jnp.zeros((kh * kw, c, o), jnp.float32), jnp.arange(blocks))
  return total.reshape(kernel_shape)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _is_valid(padding) -> bool:
  """'VALID', or explicit padding that is zero everywhere."""
  if isinstance(padding, str):
    return padding == 'VALID'
  return all(tuple(p) == (0, 0) for p in padding)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  """Whether the dimension numbers (strings or flax's ConvDimensionNumbers) mean NHWC, HWIO."""
  if dimension_numbers is None:
    return False
  nhwc = lax.conv_dimension_numbers(lhs_shape, rhs_shape, ('NHWC', 'HWIO', 'NHWC'))
  return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == nhwc


def _ones(dilation) -> bool:
  """No dilation (or stride): None, or 1 in every dimension."""
  return dilation is None or all(v == 1 for v in dilation)


def _explicit(padding, size, window, strides):
  """'SAME', 'VALID' or explicit padding, as ((lo, hi), (lo, hi)) for this size, window and strides."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(size, window, strides, padding)
  return tuple(tuple(p) for p in padding)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
  """`lax.conv_general_dilated` through `depthwise_conv2d`, `pointwise_conv2d` or `conv2d` where they fit."""
  plain = functools.partial(
      lax.conv_general_dilated,
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
  )
  nhwc = lhs.ndim == 4 and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
  strides = tuple(window_strides or (1, 1))
  if (
      nhwc
      and feature_group_count > 1
      and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
      and _ones(lhs_dilation)
      and _ones(rhs_dilation)
      and not kwargs
  ):
    return depthwise_conv2d(
        lhs, rhs, strides, _explicit(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    )
  if (
      nhwc
      and feature_group_count == 1
      and rhs.shape[:2] == (1, 1)
      and _ones(lhs_dilation)
      and _ones(rhs_dilation)
      and not kwargs
  ):
    # SAME pads a 1x1 kernel by nothing, at any stride
    if all(p == (0, 0) for p in _explicit(padding, lhs.shape[1:3], (1, 1), strides)):
      return pointwise_conv2d(lhs, rhs, strides, precision)
  fits = (
      nhwc
      and feature_group_count == 1
      and _ones(window_strides)
      and _ones(lhs_dilation)
      and _ones(rhs_dilation)
      and not kwargs
      and rhs.shape[0] * rhs.shape[1] > 1
  )
  if not fits:
    return plain()
  return conv2d(lhs, rhs, _explicit(padding, lhs.shape[1:3], rhs.shape[:2], (1, 1)))


def onednn_conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
  """`lax.conv_general_dilated` by oneDNN (`onednn.conv2d`) where it fits, else as `conv_general_dilated`."""
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
  strides = tuple(window_strides or (1, 1))
  if (
      lhs.ndim == 4
      and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
      and _ones(lhs_dilation)
      and _ones(rhs_dilation)
      and not kwargs
      and lhs.dtype == rhs.dtype
      and lhs.dtype in onednn.DTYPES
  ):
    pads = _explicit(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    if onednn.fits(lhs.shape, rhs.shape, strides, pads, feature_group_count):
      return onednn.conv2d(lhs, rhs, strides, pads, feature_group_count)
  return conv_general_dilated(
      *args, feature_group_count=feature_group_count, precision=precision, **kwargs
  )


def _pair(value) -> tuple:
  """nn.Conv's strides or dilation (None, an int or a sequence) for two spatial dimensions."""
  if value is None:
    return (1, 1)
  return (value, value) if isinstance(value, int) else tuple(value)


class Conv(nn.Conv):
  """`nn.Conv` by oneDNN, with the bias inside the convolution's VJP (`onednn.conv2d_bias`).

  flax adds the bias after the convolution, so XLA sums the output gradient for the bias
  gradient in a pass of its own, which in bfloat16 is slow; with the bias inside,
  oneDNN sums it in bfloat16 while it reads the output gradient for the kernel's. The
  parameters are nn.Conv's (`kernel`, `bias`, same shapes and initialisers) and the class
  is named Conv, so layers a model leaves unnamed keep nn.Conv's names (Conv_0, ...):
  weights and checkpoints move between layer forms. A convolution without a bias, with a
  mask or dilation, not 2-D or that oneDNN does not take runs as nn.Conv (with the
  `conv_general_dilated` it is given).
  """

  @nn.compact
  def __call__(self, inputs):
    # As nn.Conv reads it: an int is a 1-D kernel.
    kernel_size = (
        (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )
    strides = _pair(self.strides)
    padding = canonicalize_padding(self.padding, len(kernel_size))
    groups = self.feature_group_count
    dtype = self.dtype or jnp.result_type(inputs.dtype, self.param_dtype)
    kernel_shape = (*kernel_size, inputs.shape[-1] // groups, self.features)
    fused = (
        self.use_bias
        and self.shared_weights
        and self.mask is None
        and inputs.ndim == 4
        and len(kernel_size) == 2
        and _pair(self.input_dilation) == _pair(self.kernel_dilation) == (1, 1)
        and padding not in ('CIRCULAR', 'REFLECT', 'CAUSAL')
        and inputs.shape[-1] % groups == 0
        and jnp.dtype(dtype) in onednn.DTYPES
    )
    if fused:
      pads = _explicit(padding, inputs.shape[1:3], kernel_size, strides)
      fused = onednn.fits(inputs.shape, kernel_shape, strides, pads, groups)
    if not fused:
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    return onednn.conv2d_bias(x, kernel, bias, strides, pads, groups)


def pointwise_conv2d(x, w, strides, precision=None):
  """Unpadded NHWC 1x1 correlation (w: [1, 1, C, O]): the strided input rows, times w.

  XLA:CPU runs a 1x1 convolution and its gradients 3-5x slower than the matmul over
  channels they are; autodiff of the slice and the dot gives the gradients as matmuls.
  """
  xs = x[:, :: strides[0], :: strides[1]]
  y = lax.dot(xs.reshape(-1, xs.shape[-1]), w.reshape(w.shape[2:]), precision=precision)
  return y.reshape(*xs.shape[:3], w.shape[-1])


def depthwise_conv2d(x, w, strides, padding):
  """NHWC depthwise correlation (w: [kh, kw, 1, C]) as a sum of kh * kw shifted, scaled copies.

  XLA:CPU runs grouped convolutions 6-20x slower than this one fused elementwise
  loop (measured on EfficientNet's shapes); autodiff of the slices gives the gradients.
  """
  kh, kw = w.shape[:2]
  (plo_h, phi_h), (plo_w, phi_w) = padding
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)))
  out_h = (xp.shape[1] - kh) // sh + 1
  out_w = (xp.shape[2] - kw) // sw + 1
  total = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw] * w[i, j, 0]
      total = tap if total is None else total + tap
  return total


# ----- max-pooling


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pool2d(x, window, size):
  return _pool2d_fwd(x, window, size)[0]


def _windows(x, window):
  """[B, H, W, C] -> [B, H/wh, wh, W/ww, ww, C]; rows and columns that fill no window dropped."""
  wh, ww = window
  b, h, w, c = x.shape
  return x[:, : h // wh * wh, : w // ww * ww].reshape(b, h // wh, wh, w // ww, ww, c)


def _pool2d_fwd(x, window, size):
  """Max over each window, and which tap won: one byte per output is all the gradient reads."""
  wins = _windows(x, window)
  taps = [wins[:, :, i, :, j] for i in range(window[0]) for j in range(window[1])]
  top = functools.reduce(jnp.maximum, taps)
  won = jnp.full(top.shape, len(taps) - 1, jnp.int8)
  for k in reversed(range(len(taps) - 1)):  # the first maximum, as select-and-scatter
    won = jnp.where(taps[k] == top, jnp.int8(k), won)
  return top, won


def _pool2d_bwd(window, size, won, dy):
  # A broadcast and a reshape, not a stack of taps: XLA fuses this with the gradient of a
  # ReLU before the pool (measured 2x faster than the stacked form with it).
  wh, ww = window
  b, oh, ow, c = dy.shape
  tap = (jnp.arange(wh)[:, None] * ww + jnp.arange(ww)).astype(jnp.int8)
  grads = jnp.where(
      won[:, :, None, :, None] == tap[:, None, :, None], dy[:, :, None, :, None], 0
  ).reshape(b, oh * wh, ow * ww, c)
  return (jnp.pad(grads, ((0, 0), (0, size[0] - oh * wh), (0, size[1] - ow * ww), (0, 0))),)


_pool2d.defvjp(_pool2d_fwd, _pool2d_bwd)


def _strided_taps(xp, window, strides, out_size):
  """Per window offset (row-major), the input element it reads in each output's window."""
  (sh, sw), (oh, ow) = strides, out_size
  return [
      xp[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]
      for i in range(window[0])
      for j in range(window[1])
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _strided_pool2d(x, window, strides, padding):
  return _strided_pool2d_fwd(x, window, strides, padding)[0]


def _strided_pool2d_fwd(x, window, strides, padding):
  """Max over each (overlapping or padded) window, and which tap won, in one byte per output."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)  # reduce_window's identity
  out_size = tuple((xp.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(2))
  taps = _strided_taps(xp, window, strides, out_size)
  top = functools.reduce(jnp.maximum, taps)
  won = jnp.full(top.shape, len(taps) - 1, jnp.int8)
  for k in reversed(range(len(taps) - 1)):  # the first maximum, as select-and-scatter
    won = jnp.where(taps[k] == top, jnp.int8(k), won)
  return top, (won, x.shape[1:3])


def _strided_pool2d_bwd(window, strides, padding, residuals, dy):
  # Each tap's share of dy, spread back to the input rows and columns it read (interior
  # padding stride - 1; negative edge padding crops the pool's padding) and summed: where
  # windows overlap the shares add, as select-and-scatter's do. XLA fuses the pads and sums.
  won, size = residuals
  (sh, sw), (_, oh, ow, _) = strides, dy.shape
  zero = jnp.zeros((), dy.dtype)
  total = None
  for i in range(window[0]):
    for j in range(window[1]):
      lo_h, lo_w = i - padding[0][0], j - padding[1][0]
      grad = lax.pad(
          jnp.where(won == i * window[1] + j, dy, zero),
          zero,
          (
              (0, 0, 0),
              (lo_h, size[0] - lo_h - (oh - 1) * sh - 1, sh - 1),
              (lo_w, size[1] - lo_w - (ow - 1) * sw - 1, sw - 1),
              (0, 0, 0),
          ),
      )
      total = grad if total is None else total + grad
  return (total,)


_strided_pool2d.defvjp(_strided_pool2d_fwd, _strided_pool2d_bwd)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] = None, padding='VALID'):
  """`nn.max_pool`; 2-D pooling through `_pool2d` (no overlap, no padding) or `_strided_pool2d`."""
  window, strides = tuple(window_shape), tuple(strides or window_shape)
  if x.ndim == 4 and window == strides and padding == 'VALID':
    return _pool2d(x, window, tuple(x.shape[1:3]))
  if x.ndim == 4 and len(window) == len(strides) == 2 and jnp.issubdtype(x.dtype, jnp.floating):
    pads = _explicit(padding, x.shape[1:3], window, strides)
    # Windows wholly in the padding, no windows, or more taps than a byte counts: reduce_window.
    fits = len(pads) == 2 and window[0] * window[1] <= 127
    if fits and all(
        0 <= min(lo, hi) and max(lo, hi) < k <= n + lo + hi
        for (lo, hi), k, n in zip(pads, window, x.shape[1:3])
    ):
      return _strided_pool2d(x, window, strides, pads)
  return nn.max_pool(x, window, strides=strides, padding=padding)


# ----- the forms, by name

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class LayerForms:
  """The convolution and pooling a model is built from.

  Attributes:
    name: the key in `LAYER_FORMS`.
    conv: a module class used as `nn.Conv` (depthwise: `feature_group_count`).
    max_pool: a function used as `nn.max_pool`.
  """

  name: str
  conv: ModuleDef
  max_pool: Callable


PLAIN = LayerForms('plain', nn.Conv, nn.max_pool)
CPU = LayerForms(
    'cpu', functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated), max_pool
)
# The CPU forms with oneDNN's convolutions (models/onednn.py); pooling as the CPU forms.
ONEDNN = LayerForms(
    'onednn', functools.partial(Conv, conv_general_dilated=onednn_conv_general_dilated), max_pool
)
LAYER_FORMS: Dict[str, LayerForms] = {forms.name: forms for forms in (PLAIN, CPU, ONEDNN)}


def layer_forms(name: str = 'auto') -> LayerForms:
  """The forms named `name`.

  'auto' is, on a CPU backend, the oneDNN forms when their library loads (else the CPU
  forms, and one log line says why), and on other backends the plain ones.
  """
  cpu = jax.default_backend() == 'cpu'
  if name == 'auto':
    name = ('onednn' if onednn.load().loaded else 'cpu') if cpu else 'plain'
  forms = lookup(LAYER_FORMS, name, 'model.layers', also=('auto',))
  if forms is ONEDNN and not cpu:
    raise ValueError(
        f"model.layers='onednn' runs on the CPU backend only, not {jax.default_backend()}: "
        "use model.layers='auto'"
    )
  if forms is ONEDNN and not onednn.load().loaded:
    raise ValueError(f"model.layers='onednn': {onednn.load().detail}; or use model.layers='cpu'")
  return forms
