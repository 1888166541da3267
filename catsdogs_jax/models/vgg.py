"""VGG16 / VGG19 (Simonyan & Zisserman 2014) with Keras layer names.

Layer names follow `keras.applications` (`block{i}_conv{j}`, `fc1`, `fc2`,
`predictions`) so that converted weights map one to one.
"""

from typing import Any, Callable, Optional, Sequence, Tuple

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from catsdogs_jax.models.heads import base_output
from catsdogs_jax.models.layers import PLAIN, LayerForms
from catsdogs_jax.models.weight_sets import KERAS_APPLICATIONS, TORCHVISION, WeightSet

WIDTHS = (64, 128, 256, 512, 512)


def adaptive_avg_pool(x, output_size: Tuple[int, int]):
  """PyTorch's AdaptiveAvgPool2d on a [B, H, W, C] map.

  Output row i averages input rows floor(i * H / out) to ceil((i + 1) * H / out)
  (exclusive), columns alike: bins overlap or repeat rows when H is not a multiple
  of `out`, or smaller than it. The bins are rectangles, so pooling the rows and then
  the columns gives their means; an axis already of the output size is left as it is.
  """
  for axis, out in zip((1, 2), output_size):
    size = x.shape[axis]
    if size != out:
      x = jnp.concatenate(
          [
              lax.slice_in_dim(x, i * size // out, -(-(i + 1) * size // out), axis=axis).mean(
                  axis=axis, keepdims=True
              )
              for i in range(out)
          ],
          axis=axis,
      )
  return x


class VGG(nn.Module):
  """VGG convolutional base, optionally with the classifier top.

  With `include_top=False` the module returns the last block's feature map, or
  a pooled vector when `pooling` is 'avg' or 'max' (as Keras' `pooling=`), or
  the logits of a new `head` (see `heads.py`) on the base.

  The top flattens the last block's map as Keras does, so fc1's width follows the
  image size (7x7x512 at 224 px). `adaptive_pool=(7, 7)` first average-pools the map
  to 7x7 as torchvision's VGG does (its AdaptiveAvgPool2d), so that torchvision's
  classifier fits at any image size; at 224 px it changes nothing.
  """

  stage_sizes: Sequence[int]
  num_outputs: int = 1000
  include_top: bool = True
  pooling: Optional[str] = None
  head: Optional[str] = None
  head_units: int = 256
  fc_units: int = 4096
  dropout_rate: float = 0.5
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)
  adaptive_pool: Optional[Tuple[int, int]] = None  # (H, W) the top's input is pooled to

  @nn.compact
  def __call__(self, x, train: bool = False):
    for block, (num_convs, width) in enumerate(zip(self.stage_sizes, WIDTHS), start=1):
      for conv in range(1, num_convs + 1):
        x = self.layers.conv(
            width,
            (3, 3),
            padding='SAME',
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name=f'block{block}_conv{conv}',
        )(x)
        x = nn.relu(x)
      x = self.layers.max_pool(x, (2, 2), strides=(2, 2))
    if not self.include_top:
      return base_output(self, x, train)
    if self.adaptive_pool is not None:
      x = adaptive_avg_pool(x, tuple(self.adaptive_pool))
    x = x.reshape((x.shape[0], -1))
    for name in ('fc1', 'fc2'):
      x = nn.Dense(self.fc_units, kernel_init=self.kernel_init, dtype=self.dtype, name=name)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(
        self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='predictions'
    )(x)
    return x.astype(jnp.float32)


def _keras_vgg(depth: int, notop: bool, md5: str) -> WeightSet:
  suffix = '_notop' if notop else ''
  file = f'vgg{depth}_weights_tf_dim_ordering_tf_kernels{suffix}.h5'
  return WeightSet(
      name=f'vgg{depth}_keras{suffix}',
      model=f'vgg{depth}',
      format='keras_h5',
      file=file,
      checksum=f'md5:{md5}',
      preprocess='caffe',
      input_size=224,
      interpolation='nearest',
      crop_fraction=1.0,
      licence="CC-BY-4.0 (the VGG authors' weights)",
      include_top=not notop,
      num_classes=None if notop else 1000,
      url=f'{KERAS_APPLICATIONS}vgg{depth}/{file}',
  )


def _torchvision_vgg(depth: int, sha256_prefix: str) -> WeightSet:
  file = f'vgg{depth}-{sha256_prefix}.pth'
  return WeightSet(
      name=f'vgg{depth}_torchvision',
      model=f'vgg{depth}',
      format='torch',
      file=file,
      checksum=f'sha256:{sha256_prefix}',
      preprocess='torch',
      input_size=224,
      interpolation='bilinear',
      crop_fraction=0.875,
      licence='BSD-3-Clause (torchvision)',
      url=f'{TORCHVISION}{file}',
  )


WEIGHT_SETS = {
    ws.name: ws
    for ws in (
        _keras_vgg(16, True, '6d6bbae143d832006294945121d1f1fc'),
        _keras_vgg(16, False, '64373286793e3c8b2b4e3219cbf3544b'),
        _keras_vgg(19, True, '253f8cb515780f3b799900260a226db6'),
        _keras_vgg(19, False, 'cbe5617147190e668d6c5d5026f83318'),
        _torchvision_vgg(16, '397923af'),
        _torchvision_vgg(19, 'dcbb9e9d'),
    )
}
