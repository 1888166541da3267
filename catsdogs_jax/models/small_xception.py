"""A small Xception-style network for small data from scratch (718,849 parameters at any size).

The "mini Xception" of Deep Learning with Python (2nd ed., section 9.3.5), which
its author trains from scratch on the same 2,000 cats-vs-dogs photos: a 5x5
convolution, then five residual blocks of two BatchNorm-ReLU-separable 3x3
convolutions and a 3x3 max-pool (stride 2), each with a strided 1x1 projection
of its input added, then global average pooling, dropout and one Dense layer.
Separable convolutions (depthwise 3x3, then pointwise 1x1) cost a ninth of a full
3x3 convolution's parameters, which is what lets it reach far more depth than the
small CNN on few images.

Layer for layer what Keras builds from `Conv2D`, `BatchNormalization`,
`SeparableConv2D(use_bias=False)`, `MaxPooling2D(3, strides=2, padding='same')`
and `GlobalAveragePooling2D` (tests/test_models.py checks the outputs against it).
"""

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.batch_norm import batch_norm
from catsdogs_jax.models.layers import PLAIN, LayerForms


class SmallXception(nn.Module):
  """Conv 5x5 -> residual separable blocks of `features` -> global average pool -> Dense."""

  num_outputs: int = 1
  stem_features: int = 32
  features: Sequence[int] = (32, 64, 128, 256, 512)
  dropout_rate: float = 0.5
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  def _conv(self, features, kernel, name, strides=1, padding='SAME', groups=1):
    return self.layers.conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=padding,
        feature_group_count=groups,
        use_bias=False,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=name,
    )

  def _bn(self, train, name):
    return batch_norm(train, name, momentum=0.99, epsilon=1e-3, dtype=self.dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self._conv(self.stem_features, 5, 'stem_conv', padding='VALID')(x)
    for i, features in enumerate(self.features, start=1):
      residual = x
      for j in (1, 2):
        x = nn.relu(self._bn(train, f'block{i}_bn{j}')(x))
        channels = x.shape[-1]
        x = self._conv(channels, 3, f'block{i}_sepconv{j}_depthwise', groups=channels)(x)
        x = self._conv(features, 1, f'block{i}_sepconv{j}_pointwise')(x)
      x = self.layers.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
      x = x + self._conv(features, 1, f'block{i}_residual', strides=2)(residual)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype, name='logits')(x)
    return x.astype(jnp.float32)
