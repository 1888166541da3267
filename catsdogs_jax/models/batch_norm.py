"""BatchNorm whose mode is chosen at call time, and frozen BatchNorm layers kept in inference mode.

A frozen BatchNorm layer behaves as in Keras (`trainable = False` since
TensorFlow 2): in training it normalises with its running statistics and does
not update them, so a frozen pretrained base computes exactly what it computed
on ImageNet. The train step switches those layers with `inference_where`; the
models only have to build their BatchNorm through `batch_norm`.
"""

import contextlib
from typing import Callable, Tuple

from flax import linen as nn


def batch_norm(train: bool, name: str, momentum: float, epsilon: float, dtype):
  """BatchNorm as a function of x: training mode when `train`, unless `inference_where` says not."""
  layer = nn.BatchNorm(momentum=momentum, epsilon=epsilon, dtype=dtype, name=name)
  return lambda x: layer(x, use_running_average=not train)


@contextlib.contextmanager
def inference_where(frozen: Callable[[Tuple[str, ...]], bool]):
  """Within this context, BatchNorm layers whose path `frozen(path)` accepts run in inference mode.

  `path` is the layer's module path plus the leaf ('layer1_0', 'bn1', 'scale'),
  the same string patterns that freeze parameters see.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (
        isinstance(module, nn.BatchNorm)
        and context.method_name == '__call__'
        and frozen(tuple(module.path) + ('scale',))
    ):
      kwargs = {**kwargs, 'use_running_average': True}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
