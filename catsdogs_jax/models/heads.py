"""New classifier heads on a convolutional base, as the transfer-learning tutorials build them.

Called inside a model's compact `__call__`, so the head's layers sit beside the
base's (`head_dense`, `head_logits`) and converted base weights load unchanged.
"""

import jax.numpy as jnp
from flax import linen as nn

HEADS = ('flatten_dense', 'flatten_mlp', 'gmp_dense', 'dense')
POOLINGS = ('avg', 'max')


def apply_head(x, head: str, num_outputs: int, units: int, dropout_rate: float, train: bool,
               kernel_init, dtype):
  """x: the base's [B, H, W, C] feature map (or [B, C], pooled) -> logits.

  flatten_dense: Flatten - Dense(outputs)                    (VGG16 transfer, Flatten-Dense(2))
  flatten_mlp:   Flatten - Dense(units, relu) - Dropout - Dense(outputs)   (Dense(256)-Dropout-Dense(1))
  gmp_dense:     GlobalMaxPool - Dropout - Dense(outputs)     (EfficientNet's tutorial head)
  dense:         Dropout - Dense(outputs) on the pooled base (config.model.pooling: logistic
                 regression on global-average-pooled features, with pooling='avg')
  """
  dense = lambda n, name: nn.Dense(n, kernel_init=kernel_init, dtype=dtype, name=name)
  if head == 'dense':
    if x.ndim != 2:
      raise ValueError("config.model.head='dense' needs a pooled base: set "
                       "config.model.pooling='avg' (or 'max').")
  elif head == 'gmp_dense':
    x = pool(x, 'max')
  elif head in ('flatten_dense', 'flatten_mlp'):
    x = x.reshape((x.shape[0], -1))
  else:
    raise ValueError(f'Unknown head {head!r} (config.model.head); choose one of {HEADS}.')
  if head == 'flatten_mlp':
    x = nn.relu(dense(units, 'head_dense')(x))
  if head != 'flatten_dense':
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
    return apply_head(x, module.head, module.num_outputs, module.head_units,
                      module.dropout_rate, train, module.kernel_init, module.dtype)
  return x.astype(jnp.float32)


def pool(x, pooling):
  """Global average or max pooling of a [B, H, W, C] map; None keeps the map."""
  if pooling == 'avg':
    x = jnp.mean(x, axis=(1, 2))
  elif pooling == 'max':
    x = jnp.max(x, axis=(1, 2))
  elif pooling is not None:
    raise ValueError(f'Unknown pooling {pooling!r} (config.model.pooling); '
                     f'choose one of {POOLINGS} or None.')
  return x
