"""oneDNN's CPU convolutions, called from jitted JAX code through XLA's FFI.

`csrc/onednn_conv.cc`, compiled when the package is installed (`setup.py`), holds XLA
custom calls for a 2-D NHWC convolution's forward pass, its input gradient and its
kernel gradient, alone or with the bias gradient (float32 or bfloat16, any stride,
padding and groups). On the 2-core AVX-512 CPU this project is measured on, oneDNN
runs the small CNN's 3x3 convolutions at 190-440 GFLOP/s (the 3-channel first layer
lowest), up to 98% of XLA's own float32 matmul and 1.2-4x the XLA CPU forms
(benchmarks/conv_layers.py).

`load()` finds the compiled library and the `onednn` package's runtime, loads them and
registers the calls, once per process; it says why when it cannot (not built, a platform
without the wheels, a runtime that fails to start). `conv2d` is the convolution with its
gradients as those calls (a custom VJP); `conv2d_bias` adds a bias, whose gradient in
bfloat16 the kernel-gradient call computes in the same pass over the output gradient.
Under a device mesh each device convolves its own batch shard (see `_partitioned`), so
the calls run inside the data-parallel step. `layers.ONEDNN` builds models with it;
`layers.layer_forms('auto')` picks it on the CPU when `load()` succeeds.
"""

import ctypes
import dataclasses
import functools
import importlib.metadata
import math
import os
import pathlib
import sysconfig
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

_LIBRARY = '_onednn_conv'  # catsdogs_jax/models/_onednn_conv{EXT_SUFFIX}, built by setup.py
# XLA's name of each call: the prefix, then a key of _TARGETS.
TARGET_PREFIX = 'catsdogs_onednn_conv_'
_TARGETS = {
    'forward': 'OnednnConvForward',
    'input_grad': 'OnednnConvInputGrad',
    'kernel_grad': 'OnednnConvKernelGrad',
    'kernel_bias_grad': 'OnednnConvKernelBiasGrad',
}
# libdnnl.so.3 names these without a search path; loaded first, by full path, from the
# wheels' lib folder, the loader finds them by name when libdnnl asks.
_RUNTIME = ('libtbb.so.12', 'libintlc.so.5', 'libsvml.so', 'libimf.so', 'libsycl.so.9')
DTYPES = (jnp.float32, jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Extension:
  """Whether the oneDNN convolutions are usable in this process.

  Attributes:
    loaded: the calls are registered with XLA.
    detail: the oneDNN version loaded, or why it did not load (a sentence that names the fix).
  """

  loaded: bool
  detail: str


def library_path() -> pathlib.Path:
  return pathlib.Path(__file__).with_name(_LIBRARY + sysconfig.get_config_var('EXT_SUFFIX'))


def _runtime_dir() -> Optional[pathlib.Path]:
  """The folder holding libdnnl.so.3, from the installed `onednn` package's file list."""
  try:
    files = importlib.metadata.distribution('onednn').files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if file.name == 'libdnnl.so.3':
      return pathlib.Path(file.locate()).parent
  return None


def _load() -> Extension:
  if os.environ.get('CATSDOGS_ONEDNN', '1') == '0':
    return Extension(False, 'turned off by CATSDOGS_ONEDNN=0')
  path = library_path()
  if not path.exists():
    return Extension(
        False,
        f'{path.name} is not built (it builds on Linux x86-64 with a C++17 compiler and the '
        'onednn wheels): reinstall with `pip install -e .`',
    )
  runtime = _runtime_dir()
  if runtime is None:
    return Extension(False, 'the onednn package is not installed: `pip install onednn==2026.1.0`')
  # The wheel's oneDNN runs its CPU engine on a SYCL CPU device: Intel's OpenCL CPU
  # runtime, which the OpenCL loader finds by this variable (read when the engine starts).
  os.environ.setdefault('OCL_ICD_FILENAMES', str(runtime / 'libintelocl.so'))
  try:
    for name in (*_RUNTIME, 'libdnnl.so.3'):
      ctypes.CDLL(str(runtime / name), mode=ctypes.RTLD_GLOBAL)
    library = ctypes.CDLL(str(path), mode=os.RTLD_NOW)
  except OSError as error:
    return Extension(
        False, f'{path.name} does not load ({error}): reinstall with `pip install -e .`'
    )
  if not all(hasattr(library, symbol) for symbol in _TARGETS.values()):
    return Extension(
        False, f'{path.name} is from an older version: reinstall with `pip install -e .`'
    )
  library.OnednnConvCheck.restype = ctypes.c_char_p
  library.OnednnConvVersion.restype = ctypes.c_char_p
  problem = library.OnednnConvCheck().decode()
  if problem:
    return Extension(False, f"oneDNN's CPU engine does not start ({problem})")
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(
        TARGET_PREFIX + name, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu'
    )
  return Extension(True, f'oneDNN {library.OnednnConvVersion().decode()}')


@functools.cache
def load() -> Extension:
  """Loads and registers the convolutions once per process; logs one line if they are off."""
  extension = _load()
  if not extension.loaded:
    logging.warning('oneDNN convolutions off, using the XLA CPU forms: %s', extension.detail)
  return extension


# ----- the convolution


def output_size(size: int, k: int, stride: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // stride + 1


def _call(name, outs, a, b, strides, padding, groups):
  """Call `name` on operands a, b; outs: ((shape, dtype), ...), one pair per result.

  Returns the result, or a tuple of them if there are several.
  """
  if not load().loaded:
    raise RuntimeError(f'oneDNN convolutions are off: {load().detail}')
  (top, bottom), (left, right) = padding
  results = jax.ffi.ffi_call(
      TARGET_PREFIX + name,
      tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in outs),
      vmap_method='sequential',
  )(
      a,
      b,
      stride_h=np.int64(strides[0]),
      stride_w=np.int64(strides[1]),
      pad_top=np.int64(top),
      pad_left=np.int64(left),
      pad_bottom=np.int64(bottom),
      pad_right=np.int64(right),
      groups=np.int64(groups),
  )
  return results if len(outs) > 1 else results[0]


def fits(x_shape, w_shape, strides, padding, groups) -> bool:
  """Whether `conv2d` takes this convolution: padding >= 0 that leaves an output row."""
  return (
      len(x_shape) == 4
      and x_shape[-1] == w_shape[2] * groups
      and w_shape[3] % groups == 0
      and all(lo >= 0 and hi >= 0 for lo, hi in padding)
      and all(
          output_size(x_shape[1 + d], w_shape[d], strides[d], *padding[d]) >= 1 for d in range(2)
      )
  )


def _read_padding(x_shape, w_shape, strides, padding) -> Tuple[Tuple[Tuple[int, int], ...], Tuple]:
  """oneDNN's padding (the bottom/right padding its output size implies) and the input rows read.

  A stride that does not divide the padded size leaves trailing input rows no window
  reads; oneDNN wants them cut rather than a negative padding.
  """
  pads, read = [], []
  for d in range(2):
    size, k, s, (lo, hi) = x_shape[1 + d], w_shape[d], strides[d], padding[d]
    out = output_size(size, k, s, lo, hi)
    hi = (out - 1) * s + k - size - lo
    read.append(size + min(hi, 0))
    pads.append((lo, max(hi, 0)))
  return tuple(pads), tuple(read)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x, w, strides, padding, groups=1):
  """NHWC x HWIO correlation (w: [kh, kw, C / groups, O]) by oneDNN, as `lax.conv_general_dilated`.

  Args:
    x: [N, H, W, C] input, float32 or bfloat16.
    w: [kh, kw, C / groups, O] kernel, in x's dtype.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), explicit, each >= 0 (see `fits`).
    groups: feature groups (C for depthwise).
  """
  return _conv2d_fwd(x, w, strides, padding, groups)[0]


def _conv2d_fwd(x, w, strides, padding, groups):
  pads, read = _read_padding(x.shape, w.shape, strides, padding)
  xr = x[:, : read[0], : read[1]]
  out = tuple(output_size(xr.shape[1 + d], w.shape[d], strides[d], *pads[d]) for d in range(2))
  y = _partitioned(
      'forward', [((x.shape[0], *out, w.shape[3]), x.dtype)], xr, w, strides, pads, groups
  )
  return y, (xr, w, x.shape)


def _input_grad(residuals, dy, strides, padding, groups):
  xr, w, x_shape = residuals
  pads, _ = _read_padding(x_shape, w.shape, strides, padding)
  dx = _partitioned(
      'input_grad', [(xr.shape, xr.dtype)], dy.astype(w.dtype), w, strides, pads, groups
  )
  return jnp.pad(dx, ((0, 0), (0, x_shape[1] - xr.shape[1]), (0, x_shape[2] - xr.shape[2]), (0, 0)))


def _conv2d_bwd(strides, padding, groups, residuals, dy):
  xr, w, x_shape = residuals
  pads, _ = _read_padding(x_shape, w.shape, strides, padding)
  dw = _partitioned(
      'kernel_grad', [(w.shape, w.dtype)], xr, dy.astype(xr.dtype), strides, pads, groups
  )
  return _input_grad(residuals, dy, strides, padding, groups), dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv2d_bias(x, w, b, strides, padding, groups=1):
  """`conv2d(x, w, ...) + b` (b: [O], in x's dtype); in bfloat16 the bias gradient is oneDNN's.

  In bfloat16, oneDNN sums the output gradient for the bias while it reads it for the
  kernel gradient, at almost no cost; XLA:CPU sums a bfloat16 array through a slow
  reduce-window (the small CNN's bias gradients took 120 ms of its 345 ms bfloat16 step,
  its step then ran at 1.6x). In float32 XLA's reduction costs no more than oneDNN's (whose
  kernel gradient of the 3-channel first layer took 14-15 ms with the bias, 8-9 without),
  so it stays.
  """
  return _conv2d_bias_fwd(x, w, b, strides, padding, groups)[0]


def _conv2d_bias_fwd(x, w, b, strides, padding, groups):
  y, residuals = _conv2d_fwd(x, w, strides, padding, groups)
  return y + b.astype(y.dtype), residuals


def _conv2d_bias_bwd(strides, padding, groups, residuals, dy):
  xr, w, x_shape = residuals
  if dy.dtype != jnp.bfloat16:
    dx, dw = _conv2d_bwd(strides, padding, groups, residuals, dy)
    return dx, dw, jnp.sum(dy, (0, 1, 2), dtype=w.dtype)
  pads, _ = _read_padding(x_shape, w.shape, strides, padding)
  dw, db = _partitioned(
      'kernel_bias_grad',
      [(w.shape, w.dtype), ((w.shape[3],), w.dtype)],
      xr,
      dy.astype(xr.dtype),
      strides,
      pads,
      groups,
  )
  return _input_grad(residuals, dy, strides, padding, groups), dw, db


conv2d_bias.defvjp(_conv2d_bias_fwd, _conv2d_bias_bwd)


# ----- one batch shard per device


def _batch_axes(mesh, arg) -> Tuple[Any, int]:
  """The mesh axes sharding `arg`'s batch dimension and their device count; (None, 1) if none.

  A batch the axes do not divide is taken whole (replicated) by every device.
  """
  spec = arg.sharding.spec
  axes = spec[0] if len(spec) else None
  if axes is None:
    return None, 1
  count = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
  return (axes, count) if arg.shape[0] % count == 0 else (None, 1)


def _rule(rule: str, **kwargs) -> Dict[str, Any]:
  """Shardy's rule for a call: only the batch factor `b` may be sharded.

  The factors that must stay whole are listed in the order they first appear, as Shardy wants.
  """
  factors = rule.replace(',', ' ').replace('->', ' ').split()
  return dict(
      sharding_rule=rule,
      need_replication_factors=tuple(f for f in dict.fromkeys(factors) if f != 'b'),
      **kwargs,
  )


def _sharded_call(name: str, rule: str, sums_batch: bool):
  """`_call(name, ...)` that each device runs on its own batch shard inside a sharded jit.

  The partitioner hands `partition` the operands' shardings; each device then calls oneDNN
  on its shard (no all-gather). The kernel (and bias) gradients sum over the batch, so
  their per-device partial sums are added over the batch's mesh axes (one all-reduce of
  their size).
  """

  @functools.partial(custom_partitioning, static_argnums=(0, 1, 2, 3))
  def call(outs, strides, padding, groups, a, b):
    return _call(name, outs, a, b, strides, padding, groups)

  def partition(outs, strides, padding, groups, mesh, arg_shapes, result_shape):
    axes, count = _batch_axes(mesh, arg_shapes[0])
    batched = NamedSharding(mesh, PartitionSpec(axes, None, None, None))
    whole = NamedSharding(mesh, PartitionSpec())
    if sums_batch:

      def lower(a, b):
        partial_sums = _call(name, outs, a, b, strides, padding, groups)
        return partial_sums if axes is None else jax.lax.psum(partial_sums, axes)

      return mesh, lower, whole if len(outs) == 1 else (whole,) * len(outs), (batched, batched)
    ((shape, dtype),) = outs  # the global shape
    local = (((shape[0] // count, *shape[1:]), dtype),)
    lower = lambda a, b: _call(name, local, a, b, strides, padding, groups)
    return mesh, lower, batched, (batched, whole)

  call.def_partition(
      partition=partition, **_rule(rule, reduction_factors=('b',) if sums_batch else ())
  )
  return call


_SHARDED = {
    'forward': _sharded_call('forward', 'b h w c, i j k o -> b p q o', False),
    'input_grad': _sharded_call('input_grad', 'b p q o, i j k o -> b h w c', False),
    'kernel_grad': _sharded_call('kernel_grad', 'b h w c, b p q o -> i j k o', True),
    'kernel_bias_grad': _sharded_call('kernel_bias_grad', 'b h w c, b p q o -> i j k o, o', True),
}


def _partitioned(name, outs, a, b, strides, padding, groups):
  """`_call` as each device's batch shard; outs: [(global shape, dtype), ...]."""
  outs = tuple((tuple(shape), jnp.dtype(dtype)) for shape, dtype in outs)
  return _SHARDED[name](outs, strides, padding, groups, a, b)
