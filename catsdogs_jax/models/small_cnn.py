"""The small convnet of the Keras cats-vs-dogs tutorial (3,453,121 parameters at 150 px)."""

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.layers import PLAIN, LayerForms


class SmallCNN(nn.Module):
  """Four valid 3x3 conv + 2x2 max-pool stages, dropout, Dense(512), Dense(outputs)."""

  num_outputs: int = 1
  features: Sequence[int] = (32, 64, 128, 128)
  dense_units: int = 512
  dropout_rate: float = 0.0
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
          kernel_init=self.kernel_init,
          dtype=self.dtype,
          name=f'conv{i}',
      )(x)
      x = nn.relu(x)
      x = self.layers.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    # The tutorial puts its dropout between Flatten and the first Dense.
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.dense_units, kernel_init=self.kernel_init, dtype=self.dtype, name='dense1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)
