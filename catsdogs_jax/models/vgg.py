"""VGG16 / VGG19 (Simonyan & Zisserman 2014) with Keras layer names.

Layer names follow `keras.applications` (`block{i}_conv{j}`, `fc1`, `fc2`,
`predictions`) so that converted weights map one to one.
"""

from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.heads import base_output
from catsdogs_jax.models.layers import Conv, relu_max_pool

WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
  """VGG convolutional base, optionally with the classifier top.

  With `include_top=False` the module returns the last block's feature map, or
  a pooled vector when `pooling` is 'avg' or 'max' (as Keras' `pooling=`), or
  the logits of a new `head` (see `heads.py`) on the base.
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

  @nn.compact
  def __call__(self, x, train: bool = False):
    for block, (num_convs, width) in enumerate(zip(self.stage_sizes, WIDTHS), start=1):
      for conv in range(1, num_convs + 1):
        x = Conv(width, (3, 3), padding='SAME', kernel_init=self.kernel_init,
                 dtype=self.dtype, name=f'block{block}_conv{conv}')(x)
        if conv < num_convs:   # the block's last ReLU goes with its pooling
          x = nn.relu(x)
      x = relu_max_pool(x, (2, 2), strides=(2, 2))
    if not self.include_top:
      return base_output(self, x, train)
    x = x.reshape((x.shape[0], -1))
    for name in ('fc1', 'fc2'):
      x = nn.Dense(self.fc_units, kernel_init=self.kernel_init, dtype=self.dtype,
                   name=name)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype,
                 name='predictions')(x)
    return x.astype(jnp.float32)
