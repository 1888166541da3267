"""EfficientNet (Tan & Le 2019) with keras.applications layer names; B0 is registered.

Every layer is named as in `keras.applications.EfficientNetB0` (`stem_conv`,
`block2a_expand_conv`, `block2a_dwconv`, `block2a_se_reduce`, `top_bn`, ...)
and sits at the top level of the parameter tree, so converted `.h5` weights map
one to one. BatchNorm uses Keras' epsilon (1e-3) and momentum (0.99).
Stochastic depth is Keras' `drop_connect_rate`: the residual branch of block b
(of n) is dropped per example with probability rate * b / n.

Keras pads the strided convolutions with `correct_pad` (one pixel less at the
top and left of an even-sized input); that is exactly what 'SAME' padding does,
so both strides use 'SAME' here.
"""

import math
from typing import Any, Callable, Optional

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.batch_norm import batch_norm
from catsdogs_jax.models.heads import base_output
from catsdogs_jax.models.layers import Conv

# (kernel, repeats, filters_in, filters_out, expand_ratio, strides) per stage, B0.
STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
# Keras' CONV_KERNEL_INITIALIZER.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by the width coefficient, kept a multiple of 8 (as Keras)."""
  filters *= width
  rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * filters:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


class EfficientNet(nn.Module):
  """EfficientNet; without the top it returns the top_activation map, pooled, or a new head."""
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  num_outputs: int = 1000
  include_top: bool = True
  pooling: Optional[str] = None
  head: Optional[str] = None
  head_units: int = 256
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2
  kernel_init: Callable = CONV_INIT
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, name, strides=1, groups=1, use_bias=False):
    return Conv(features, (kernel, kernel), (strides, strides), padding='SAME',
                feature_group_count=groups, use_bias=use_bias,
                kernel_init=self.kernel_init, dtype=self.dtype, name=name)

  def _bn(self, train, name):
    return batch_norm(train, name, momentum=0.99, epsilon=1e-3, dtype=self.dtype)

  def _block(self, inputs, train, name, kernel, filters_in, filters_out, expand_ratio,
             strides, drop_rate):
    """MBConv: 1x1 expand - depthwise - squeeze-excite - 1x1 project (+ residual)."""
    filters = filters_in * expand_ratio
    x = inputs
    if expand_ratio != 1:
      x = self._conv(filters, 1, f'{name}expand_conv')(x)
      x = nn.swish(self._bn(train, f'{name}expand_bn')(x))
    x = self._conv(filters, kernel, f'{name}dwconv', strides=strides, groups=filters)(x)
    x = nn.swish(self._bn(train, f'{name}bn')(x))
    se = jnp.mean(x, axis=(1, 2), keepdims=True)
    se = nn.swish(self._conv(max(1, int(filters_in * SE_RATIO)), 1, f'{name}se_reduce',
                             use_bias=True)(se))
    se = nn.sigmoid(self._conv(filters, 1, f'{name}se_expand', use_bias=True)(se))
    x = x * se     # Keras: {name}se_excite
    x = self._conv(filters_out, 1, f'{name}project_conv')(x)
    x = self._bn(train, f'{name}project_bn')(x)
    if strides == 1 and filters_in == filters_out:
      x = nn.Dropout(drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train,
                     name=f'{name}drop')(x)
      x = x + inputs
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    width, depth = self.width_coefficient, self.depth_coefficient
    x = self._conv(round_filters(32, width), 3, 'stem_conv', strides=2)(x)
    x = nn.swish(self._bn(train, 'stem_bn')(x))
    total = sum(round_repeats(stage[1], depth) for stage in STAGES)
    b = 0
    for i, (kernel, repeats, f_in, f_out, expand, strides) in enumerate(STAGES):
      f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
      for j in range(round_repeats(repeats, depth)):
        x = self._block(x, train, f'block{i + 1}{chr(j + 97)}_', kernel,
                        f_in if j == 0 else f_out, f_out, expand, strides if j == 0 else 1,
                        self.stochastic_depth_rate * b / total)
        b += 1
    x = self._conv(round_filters(1280, width), 1, 'top_conv')(x)
    x = nn.swish(self._bn(train, 'top_bn')(x))
    if not self.include_top:
      return base_output(self, x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='top_dropout')(x)
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='predictions')(x)
    return x.astype(jnp.float32)
