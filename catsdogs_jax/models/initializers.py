"""Kernel initialisers selectable by name from the config (`config.model.kernel_init`)."""

from typing import Callable, Dict

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.registry import lookup

# config.model.kernel_init -> (config.model.init_stddev) -> the flax initialiser.
INITIALIZERS: Dict[str, Callable[[float], Callable]] = {
    'glorot_uniform': lambda stddev: nn.initializers.glorot_uniform(),
    # torchvision uses kaiming_normal with fan_out for convolutions.
    'he_normal': lambda stddev: nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    'lecun_normal': lambda stddev: nn.initializers.lecun_normal(),
    'normal': lambda stddev: nn.initializers.normal(stddev=stddev),
}


def get_initializer(name: str, stddev: float = 0.01):
  """Returns a flax kernel initialiser.

  `glorot_uniform` is Keras' default (what the tutorials used); `normal` is the
  VGG paper's N(0, stddev) scheme; `he_normal` matches torchvision's ResNets.
  """
  return lookup(INITIALIZERS, name, 'model.kernel_init')(stddev)


DEFAULT_DTYPE = jnp.float32
