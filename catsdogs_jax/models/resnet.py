"""ResNet-18/34/50/101/152 (He et al. 2015) with BatchNorm, in torchvision's layout.

Module names mirror torchvision's state-dict keys (`conv1`, `bn1`,
`layer{i}_{j}/conv1`, `.../downsample_conv`, `fc`) so that converted weights
map one to one. Bottleneck blocks stride in the 3x3 convolution (ResNet v1.5,
as torchvision does).
"""

from typing import Any, Callable, Sequence, Type

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.batch_norm import batch_norm
from catsdogs_jax.models.layers import PLAIN, LayerForms
from catsdogs_jax.models.weight_sets import TORCHVISION, WeightSet


def _conv(block, features: int, kernel: int, strides: int, name: str):
  """Bias-free convolution with torchvision's "same" padding (kernel // 2)."""
  return block.layers.conv(
      features,
      (kernel, kernel),
      (strides, strides),
      padding=[(kernel // 2, kernel // 2)] * 2,
      use_bias=False,
      kernel_init=block.kernel_init,
      dtype=block.dtype,
      name=name,
  )


def _shortcut(block, x, y, features: int, train: bool):
  """Identity, or a 1x1 projection where the shape changes."""
  if x.shape == y.shape:
    return x
  residual = _conv(block, features, 1, block.strides, 'downsample_conv')(x)
  return _batch_norm(train, block.dtype, 'downsample_bn')(residual)


def _batch_norm(train: bool, dtype, name: str):
  # torchvision: momentum 0.1 (flax counts the other way), eps 1e-5.
  return batch_norm(train, name, momentum=0.9, epsilon=1e-5, dtype=dtype)


class _Block(nn.Module):
  """Fields shared by both residual blocks; `features` is the block's inner width."""

  features: int
  strides: int = 1
  kernel_init: Callable = nn.initializers.he_normal()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)


class BasicBlock(_Block):

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self, self.features, 3, self.strides, 'conv1')(x)
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
    y = _batch_norm(train, self.dtype, 'bn2')(_conv(self, self.features, 3, 1, 'conv2')(y))
    return nn.relu(y + _shortcut(self, x, y, self.features, train))


class Bottleneck(_Block):

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self, self.features, 1, 1, 'conv1')(x)
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
    y = _conv(self, self.features, 3, self.strides, 'conv2')(y)
    y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(y))
    y = _batch_norm(train, self.dtype, 'bn3')(_conv(self, self.features * 4, 1, 1, 'conv3')(y))
    return nn.relu(y + _shortcut(self, x, y, self.features * 4, train))


class ResNet(nn.Module):
  """ResNet; `include_top=False` returns globally average-pooled features."""

  stage_sizes: Sequence[int]
  block_cls: Type[nn.Module]
  num_outputs: int = 1000
  include_top: bool = True
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.he_normal()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.layers.conv(
        64,
        (7, 7),
        (2, 2),
        padding=[(3, 3), (3, 3)],
        use_bias=False,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name='conv1',
    )(x)
    x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    x = self.layers.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(
            64 * 2**i,
            strides=strides,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            layers=self.layers,
            name=f'layer{i + 1}_{j}',
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if not self.include_top:
      return x.astype(jnp.float32)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='fc')(x)
    return x.astype(jnp.float32)


# torchvision's IMAGENET1K_V1 files; their names carry the start of their SHA-256.
WEIGHT_SETS = {
    f'resnet{depth}_torchvision': WeightSet(
        name=f'resnet{depth}_torchvision',
        model=f'resnet{depth}',
        format='torch',
        file=f'resnet{depth}-{prefix}.pth',
        checksum=f'sha256:{prefix}',
        preprocess='torch',
        input_size=224,
        interpolation='bilinear',
        crop_fraction=0.875,
        licence='BSD-3-Clause (torchvision)',
        url=f'{TORCHVISION}resnet{depth}-{prefix}.pth',
    )
    for depth, prefix in (
        (18, 'f37072fd'),
        (34, 'b627a593'),
        (50, '0676ba61'),
        (101, '63fe2227'),
        (152, '394f9c45'),
    )
}
