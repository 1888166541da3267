"""New classifier heads on a convolutional base, as the transfer-learning tutorials build them.

Called inside a model's compact `__call__`, so the head's layers sit beside the
base's (`head_dense`, `head_logits`) and converted base weights load unchanged.
"""

import dataclasses
from typing import Callable, Dict

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.registry import lookup

# config.model.pooling -> [B, H, W, C] map -> [B, C] vector (None keeps the map).
POOLINGS: Dict[str, Callable] = {
    'avg': lambda x: jnp.mean(x, axis=(1, 2)),
    'max': lambda x: jnp.max(x, axis=(1, 2)),
}


def pool(x, pooling):
  """Global average or max pooling of a [B, H, W, C] map; None keeps the map."""
  if pooling is None:
    return x
  return lookup(POOLINGS, pooling, 'model.pooling', also=('None',))(x)


def _flatten(x):
  return x.reshape((x.shape[0], -1))


def _pooled(x):
  if x.ndim != 2:
    raise ValueError(
        "config.model.head='dense' needs a pooled base: set "
        "config.model.pooling='avg' (or 'max')."
    )
  return x


@dataclasses.dataclass(frozen=True)
class Head:
  """The layers of a head, in order: `features`, Dense(units, relu), Dropout, Dense(outputs)."""

  features: Callable  # the base's output -> [B, D]
  hidden: bool  # whether the Dense(units, relu) layer is there
  dropout: bool  # whether the Dropout is there


# config.model.head -> its Head.
HEADS: Dict[str, Head] = {
    'flatten_dense': Head(_flatten, hidden=False, dropout=False),
    'flatten_mlp': Head(_flatten, hidden=True, dropout=True),
    'gmp_dense': Head(lambda x: pool(x, 'max'), hidden=False, dropout=True),
    'dense': Head(_pooled, hidden=False, dropout=True),
}


def get_head(name: str) -> Head:
  return lookup(HEADS, name, 'model.head')


def apply_head(
    x, head: str, num_outputs: int, units: int, dropout_rate: float, train: bool, kernel_init, dtype
):
  """x: the base's [B, H, W, C] feature map (or [B, C], pooled) -> logits.

  flatten_dense: Flatten - Dense(outputs)                    (VGG16 transfer, Flatten-Dense(2))
  flatten_mlp:   Flatten - Dense(units, relu) - Dropout - Dense(outputs)   (Dense(256)-Dropout-Dense(1))
  gmp_dense:     GlobalMaxPool - Dropout - Dense(outputs)     (EfficientNet's tutorial head)
  dense:         Dropout - Dense(outputs) on the pooled base (config.model.pooling: logistic
                 regression on global-average-pooled features, with pooling='avg')
  """
  spec = get_head(head)
  dense = lambda n, name: nn.Dense(n, kernel_init=kernel_init, dtype=dtype, name=name)
  x = spec.features(x)
  if spec.hidden:
    x = nn.relu(dense(units, 'head_dense')(x))
  if spec.dropout:
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  return dense(num_outputs, 'head_logits')(x).astype(jnp.float32)


def base_output(module, x, train: bool):
  """What a base without its own top returns: the map or a pooled vector, or a new head on them.

  `module` has the fields `head`, `pooling`, `num_outputs`, `head_units`,
  `dropout_rate`, `kernel_init` and `dtype` (as Keras' `include_top=False,
  pooling=...` plus our heads).
  """
  x = pool(x, module.pooling)
  if module.head:
    return apply_head(
        x,
        module.head,
        module.num_outputs,
        module.head_units,
        module.dropout_rate,
        train,
        module.kernel_init,
        module.dtype,
    )
  return x.astype(jnp.float32)
