"""Per-example losses and correctness for 1-logit sigmoid and softmax heads."""

import jax
import jax.numpy as jnp
import optax

LOSSES = ('sigmoid', 'softmax')


def per_example_loss(logits, labels, loss: str):
  """Cross-entropy per example; `logits` is [B, 1] for sigmoid, [B, C] for softmax."""
  logits = logits.astype(jnp.float32)
  if loss == 'sigmoid':
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32))
  if loss == 'softmax':
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  raise ValueError(f'Unknown loss {loss!r} (config.loss); choose one of {LOSSES}.')


def predictions(logits, loss: str):
  """Predicted class index per example."""
  if loss == 'sigmoid':
    return (logits[:, 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def probabilities(logits, loss: str):
  """[B, num_classes] class probabilities; a sigmoid head's 1 logit gives [1 - p, p]."""
  logits = logits.astype(jnp.float32)
  if loss == 'sigmoid':
    p = jax.nn.sigmoid(logits[:, 0])
    return jnp.stack([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)
