"""Kernel initialisers selectable by name from the config (`config.model.kernel_init`)."""

import jax.numpy as jnp
from flax import linen as nn

INITIALIZERS = ('glorot_uniform', 'he_normal', 'lecun_normal', 'normal')


def get_initializer(name: str, stddev: float = 0.01):
  """Returns a flax kernel initialiser.

  `glorot_uniform` is Keras' default (what the tutorials used); `normal` is the
  VGG paper's N(0, stddev) scheme; `he_normal` matches torchvision's ResNets.
  """
  if name == 'glorot_uniform':
    return nn.initializers.glorot_uniform()
  if name == 'he_normal':
    # torchvision uses kaiming_normal with fan_out for convolutions.
    return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  if name == 'lecun_normal':
    return nn.initializers.lecun_normal()
  if name == 'normal':
    return nn.initializers.normal(stddev=stddev)
  raise ValueError(
      f'Unknown kernel initialiser {name!r}; choose one of {", ".join(INITIALIZERS)} '
      '(config.model.kernel_init).')


DEFAULT_DTYPE = jnp.float32
