"""ResNet-18/34/50/101/152 (He et al. 2015) with BatchNorm, in torchvision's layout.

Module names mirror torchvision's state-dict keys (`conv1`, `bn1`,
`layer{i}_{j}/conv1`, `.../downsample_conv`, `fc`) so that converted weights
map one to one. Bottleneck blocks stride in the 3x3 convolution (ResNet v1.5,
as torchvision does).
"""

from typing import Any, Callable, Sequence, Type

import jax.numpy as jnp
from flax import linen as nn


def _batch_norm(train: bool, dtype, name: str):
  # torchvision: momentum 0.1 (flax counts the other way), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  kernel_init: Callable = nn.initializers.he_normal()
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
        kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    residual = x
    y = conv(self.features, 3, self.strides, 'conv1')(x)
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
    y = conv(self.features, 3, 1, 'conv2')(y)
    y = _batch_norm(train, self.dtype, 'bn2')(y)
    if residual.shape != y.shape:
      residual = conv(self.features, 1, self.strides, 'downsample_conv')(x)
      residual = _batch_norm(train, self.dtype, 'downsample_bn')(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  features: int
  strides: int = 1
  kernel_init: Callable = nn.initializers.he_normal()
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
        kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    residual = x
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(conv(self.features, 1, 1, 'conv1')(x)))
    y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(
        conv(self.features, 3, self.strides, 'conv2')(y)))
    y = _batch_norm(train, self.dtype, 'bn3')(conv(self.features * 4, 1, 1, 'conv3')(y))
    if residual.shape != y.shape:
      residual = conv(self.features * 4, 1, self.strides, 'downsample_conv')(x)
      residual = _batch_norm(train, self.dtype, 'downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet; `include_top=False` returns globally average-pooled features."""
  stage_sizes: Sequence[int]
  block_cls: Type[nn.Module]
  num_outputs: int = 1000
  include_top: bool = True
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.he_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                kernel_init=self.kernel_init, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(64 * 2**i, strides=strides, kernel_init=self.kernel_init,
                           dtype=self.dtype, name=f'layer{i + 1}_{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if not self.include_top:
      return x.astype(jnp.float32)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)
