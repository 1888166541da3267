"""Model registry: every architecture is chosen by name from `config.model.name`."""

import functools
from typing import Any, Dict

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.alexnet import AlexNet
from catsdogs_jax.models.efficientnet import EfficientNet
from catsdogs_jax.models.initializers import get_initializer
from catsdogs_jax.models.mnist import MnistCNN, MnistMLP
from catsdogs_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from catsdogs_jax.models.small_cnn import SmallCNN
from catsdogs_jax.models.vgg import VGG

VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3))
VGG19 = functools.partial(VGG, stage_sizes=(2, 2, 4, 4, 4))
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
EfficientNetB0 = functools.partial(EfficientNet, width_coefficient=1.0, depth_coefficient=1.0)

MODELS: Dict[str, Any] = {
    'small_cnn': SmallCNN,
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
}

# Config fields that only some architectures have; None in the config means
# "the architecture's default".
_OPTIONAL_FIELDS = ('include_top', 'pooling', 'head', 'head_units', 'stochastic_depth_rate')


def _module_class(factory):
  return factory.func if isinstance(factory, functools.partial) else factory


def num_outputs(config) -> int:
  """One logit for a binary sigmoid head, one per class for softmax."""
  return 1 if config.loss == 'sigmoid' else config.num_classes


def create_model(config) -> nn.Module:
  """Builds the Flax module described by `config.model`."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r} (config.model.name); '
                     f'choose one of: {", ".join(sorted(MODELS))}.')
  factory = MODELS[name]
  cls = _module_class(factory)
  kwargs = dict(
      num_outputs=num_outputs(config),
      dropout_rate=config.model.dropout_rate,
      kernel_init=get_initializer(config.model.kernel_init, config.model.init_stddev),
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
  )
  for field in _OPTIONAL_FIELDS:
    value = config.model[field]
    if value is None:
      continue
    if field not in cls.__dataclass_fields__:
      raise ValueError(f'Model {name!r} has no option {field!r}; leave '
                       f'config.model.{field} unset (None) for it.')
    kwargs[field] = value
  return factory(**kwargs)
