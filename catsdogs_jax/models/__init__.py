"""Model registry: every architecture is chosen by name from `config.model.name`.

Published weight sets are listed beside their models and gathered here in
`WEIGHT_SETS` (`config.init_from='pretrained:NAME'`).

May import: nothing of the package outside `models/` (every other folder builds on it).
"""

import functools
import re
from typing import Any, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models import efficientnet, resnet, vgg
from catsdogs_jax.models.alexnet import AlexNet
from catsdogs_jax.models.efficientnet import (
    EfficientNet,  # noqa: F401 (models.EfficientNet)
    EfficientNetB0,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
)
from catsdogs_jax.models.initializers import get_initializer
from catsdogs_jax.models.layers import LAYER_FORMS, layer_forms
from catsdogs_jax.models.mnist import MnistCNN, MnistMLP
from catsdogs_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from catsdogs_jax.models.small_cnn import SmallCNN
from catsdogs_jax.models.small_xception import SmallXception
from catsdogs_jax.models.vgg import VGG
from catsdogs_jax.registry import lookup

VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3))
VGG19 = functools.partial(VGG, stage_sizes=(2, 2, 4, 4, 4))
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)

MODELS: Dict[str, Any] = {
    'small_cnn': SmallCNN,
    'small_xception': SmallXception,
    'mnist_mlp': MnistMLP,
    'mnist_cnn': MnistCNN,
    'alexnet': AlexNet,
    'vgg16': VGG16,
    'vgg19': VGG19,
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'efficientnet_b0': EfficientNetB0,
    'efficientnet_lite0': EfficientNetLite0,
    'efficientnet_lite1': EfficientNetLite1,
    'efficientnet_lite2': EfficientNetLite2,
}

WEIGHT_SETS = {**vgg.WEIGHT_SETS, **resnet.WEIGHT_SETS, **efficientnet.WEIGHT_SETS}


def _module_class(factory):
  return factory.func if isinstance(factory, functools.partial) else factory


def input_shape(config) -> Tuple[int, int, int]:
  """(H, W, C) of the images a config's model takes."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def num_outputs(config) -> int:
  """One logit for a binary sigmoid head, one per class for softmax."""
  return 1 if config.loss == 'sigmoid' else config.data.num_classes


def create_model(config) -> nn.Module:
  """The Flax module `config.model` describes: its fields are the module's keyword arguments.

  Every field but `name` that is set goes to the module as it is (None: the
  architecture's default), except two that name what the module gets:
  `kernel_init` (with `init_stddev`) an initialiser, `layers` the layer forms,
  resolved now for this backend. The outputs follow `loss` and
  `data.num_classes`, the compute dtype `half_precision`. A field the
  architecture does not have is an error naming it.
  """
  name = config.model.name
  factory = lookup(MODELS, name, 'model.name')
  fields = _module_class(factory).__dataclass_fields__
  kwargs = {
      k: v
      for k, v in config.model.items()
      if k not in ('name', 'kernel_init', 'init_stddev', 'layers') and v is not None
  }
  kwargs['kernel_init'] = get_initializer(config.model.kernel_init, config.model.init_stddev)
  if 'layers' in fields:  # models with convolutions or pooling
    kwargs['layers'] = layer_forms(config.model.layers)
  elif config.model.layers != 'auto':
    # the name checked without starting oneDNN for a model that never calls it
    lookup(LAYER_FORMS, config.model.layers, 'model.layers', also=('auto',))
  unknown = [k for k in kwargs if k not in fields]
  if unknown:
    raise ValueError(
        f'Model {name!r} has no option {unknown[0]!r}; leave '
        f'config.model.{unknown[0]} unset (None) for it.'
    )
  return factory(
      num_outputs=num_outputs(config),
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
      **kwargs,
  )


def path_string(path: Tuple[str, ...]) -> str:
  return '/'.join(str(p) for p in path)


def matches_any(path: Tuple[str, ...], patterns: Sequence[str]) -> bool:
  """True when a parameter path ('block1_conv1/kernel') matches any regex."""
  name = path_string(path)
  return any(re.search(p, name) for p in patterns)


def layer_order(model: nn.Module, input_shape) -> List[str]:
  """The model's top-level layers that have parameters, in the order its forward pass calls them."""
  order = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if len(path) == 1 and context.method_name == '__call__' and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = abstract_variables(model, input_shape)['params']
  return [name for name in order if name in params]


def layers_from(model: nn.Module, input_shape, first: str) -> Tuple[str, ...]:
  """Regexes of the parameters of layer `first` and every layer after it (config.train_from)."""
  order = layer_order(model, input_shape)
  if first not in order:
    raise ValueError(
        f'config.train_from={first!r} is not a layer with parameters of this model; '
        f'its layers are: {", ".join(order)}.'
    )
  return tuple(f'^{re.escape(name)}/' for name in order[order.index(first) :])


def init_variables(model, rng, image_shape):
  """Initialises a model's variables for inputs of shape (H, W, C)."""
  params_rng, dropout_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init({'params': params_rng, 'dropout': dropout_rng}, dummy, train=False)


def abstract_variables(model, image_shape):
  """Shapes and dtypes of a model's variables, computed without running it."""
  return jax.eval_shape(lambda rng: init_variables(model, rng, image_shape), jax.random.PRNGKey(0))
