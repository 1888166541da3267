"""The MNIST warm-up models: a 784-1024-10 MLP, and Conv(64, 5x5) - MaxPool(2) - Dense(100) - Dense(10)."""

from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.layers import PLAIN, LayerForms


class MnistMLP(nn.Module):
  """Flatten - Dense(1024, relu) - Dense(10): 814,090 parameters on 28 x 28 x 1."""

  num_outputs: int = 10
  hidden_units: int = 1024
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden_units, kernel_init=self.kernel_init, dtype=self.dtype, name='hidden')(
        x
    )
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)


class MnistCNN(nn.Module):
  num_outputs: int = 10
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.layers.conv(
        64, (5, 5), padding='VALID', kernel_init=self.kernel_init, dtype=self.dtype, name='conv1'
    )(x)
    x = nn.relu(x)
    x = self.layers.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(100, kernel_init=self.kernel_init, dtype=self.dtype, name='dense1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)
