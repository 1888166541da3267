"""AlexNet (Krizhevsky et al. 2012): 5 convolutions and 3 dense layers, the tutorials' baseline.

As the tutorial describes it: ReLU everywhere, overlapping 3x3/2 max-pooling,
dropout 0.5 before each of the first two dense layers, at 227 x 227 (the size
at which the paper's 11x11/4 first convolution gives 55 x 55). One tower, no
local response normalisation (later work found it does not help). 62,378,344
parameters for 1,000 classes.
"""

from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.layers import PLAIN, LayerForms

# (features, kernel, stride, padding, max-pool after)
CONVS = (
    (96, 11, 4, 0, True),
    (256, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)


class AlexNet(nn.Module):
  num_outputs: int = 1000
  dense_units: int = 4096
  dropout_rate: float = 0.5
  kernel_init: Callable = nn.initializers.normal(stddev=0.01)
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, (features, kernel, stride, pad, pool) in enumerate(CONVS, start=1):
      x = self.layers.conv(
          features,
          (kernel, kernel),
          (stride, stride),
          padding=[(pad, pad)] * 2,
          kernel_init=self.kernel_init,
          dtype=self.dtype,
          name=f'conv{i}',
      )(x)
      x = nn.relu(x)
      if pool:
        x = self.layers.max_pool(x, (3, 3), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i in (6, 7):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(self.dense_units, kernel_init=self.kernel_init, dtype=self.dtype, name=f'fc{i}')(
          x
      )
      x = nn.relu(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='fc8')(x)
    return x.astype(jnp.float32)
