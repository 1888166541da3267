"""Per-example losses and correctness for 1-logit sigmoid and softmax heads.

Training may score against soft targets (label smoothing, mixup, CutMix): `soft_targets`
makes them, `Loss.soft_per_example` scores them. Evaluation always uses the integer labels.
"""

import dataclasses
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import optax

from catsdogs_jax.registry import lookup


@dataclasses.dataclass(frozen=True)
class Loss:
  """What a head's loss decides: the loss, the predicted class and the class probabilities.

  Each takes the [B, 1] (sigmoid) or [B, C] (softmax) logits.
  """

  per_example: Callable  # (float32 logits, integer labels) -> [B] cross-entropy
  # (float32 logits, [B, num_classes] target probabilities) -> [B] cross-entropy
  soft_per_example: Callable
  predictions: Callable  # logits -> [B] int32 class index
  probabilities: Callable  # float32 logits -> [B, num_classes]


def _sigmoid_cross_entropy(logits, labels):
  return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32))


def _sigmoid_soft_cross_entropy(logits, targets):
  # The one logit scores class 1: its target is that class's probability.
  return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets[:, 1])


def _sigmoid_probabilities(logits):
  p = jax.nn.sigmoid(logits[:, 0])
  return jnp.stack([1.0 - p, p], axis=-1)


# config.loss -> its Loss.
LOSSES: Dict[str, Loss] = {
    'sigmoid': Loss(
        per_example=_sigmoid_cross_entropy,
        soft_per_example=_sigmoid_soft_cross_entropy,
        predictions=lambda logits: (logits[:, 0] > 0).astype(jnp.int32),
        probabilities=_sigmoid_probabilities,
    ),
    'softmax': Loss(
        per_example=optax.softmax_cross_entropy_with_integer_labels,
        soft_per_example=optax.softmax_cross_entropy,
        predictions=lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        probabilities=lambda logits: jax.nn.softmax(logits, axis=-1),
    ),
}


def get_loss(name: str) -> Loss:
  return lookup(LOSSES, name, 'loss')


def per_example_loss(logits, labels, loss: str):
  """Cross-entropy per example; `logits` is [B, 1] for sigmoid, [B, C] for softmax."""
  return get_loss(loss).per_example(logits.astype(jnp.float32), labels)


def soft_targets(labels, num_classes: int, smoothing: float = 0.0):
  """[B, num_classes] targets (1 - smoothing) * one_hot + smoothing / num_classes.

  As optax.smooth_labels and Keras' CategoricalCrossentropy(label_smoothing); for a sigmoid
  head (2 classes) the class-1 column is Keras' BinaryCrossentropy target y (1 - s) + s / 2.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return optax.smooth_labels(one_hot, smoothing) if smoothing else one_hot


def soft_per_example_loss(logits, targets, loss: str):
  """Cross-entropy per example against [B, num_classes] target probabilities."""
  return get_loss(loss).soft_per_example(logits.astype(jnp.float32), targets)


def predictions(logits, loss: str):
  """Predicted class index per example."""
  return get_loss(loss).predictions(logits)


def probabilities(logits, loss: str):
  """[B, num_classes] class probabilities; a sigmoid head's 1 logit gives [1 - p, p]."""
  return get_loss(loss).probabilities(logits.astype(jnp.float32))
