"""The small convnet of the Keras cats-vs-dogs tutorial (3,453,121 parameters at 150 px).

Two options for training from scratch on little data, both off by default (the
tutorial's model): `batch_norm` makes each stage Conv (no bias)-BatchNorm-ReLU,
with Keras' BatchNormalization defaults; `pooling` ('avg' or 'max') pools the
last map globally instead of flattening it, so the dense layers no longer grow
with the image size.
"""

from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.batch_norm import batch_norm as make_batch_norm
from catsdogs_jax.models.heads import pool
from catsdogs_jax.models.layers import PLAIN, LayerForms


class GlobalPool(nn.Module):
  """Global 'avg' / 'max' pooling of a [B, H, W, C] map (None: the map), as a layer.

  A layer, so that the image-size check (config_checks) sees an empty map reach
  it: pooled, an empty map would be a vector of NaNs of the right shape.
  """

  pooling: Optional[str] = None

  def __call__(self, x):
    return pool(x, self.pooling)


class SmallCNN(nn.Module):
  """Four valid 3x3 conv + 2x2 max-pool stages, dropout, Dense(512), Dense(outputs)."""

  num_outputs: int = 1
  features: Sequence[int] = (32, 64, 128, 128)
  dense_units: int = 512
  dropout_rate: float = 0.0
  batch_norm: bool = False  # Conv (no bias)-BatchNorm-ReLU stages
  pooling: Optional[str] = None  # 'avg' / 'max': global pooling instead of Flatten
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, features in enumerate(self.features, start=1):
      x = self.layers.conv(
          features,
          (3, 3),
          padding='VALID',
          use_bias=not self.batch_norm,  # BatchNorm's offset takes the bias's place
          kernel_init=self.kernel_init,
          dtype=self.dtype,
          name=f'conv{i}',
      )(x)
      if self.batch_norm:
        # Keras' BatchNormalization defaults; built through make_batch_norm so that
        # frozen layers run in inference mode (batch_norm.inference_where).
        x = make_batch_norm(train, f'bn{i}', momentum=0.99, epsilon=1e-3, dtype=self.dtype)(x)
      x = nn.relu(x)
      x = self.layers.max_pool(x, (2, 2), strides=(2, 2))
    if self.pooling is not None:
      x = GlobalPool(self.pooling, name='global_pool')(x)
    x = x.reshape((x.shape[0], -1))
    # The tutorial puts its dropout between Flatten and the first Dense.
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.dense_units, kernel_init=self.kernel_init, dtype=self.dtype, name='dense1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)
