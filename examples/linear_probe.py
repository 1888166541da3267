"""A linear probe: logistic regression on frozen EfficientNet-Lite0 features, in plain JAX/optax.

Shows the weights and feature API: the published ImageNet weights by name
(`loading.read('pretrained:efficientnet_lite0')`, converted once into a cache,
$CATSDOGS_JAX_WEIGHTS or ~/.cache/catsdogs_jax/weights), the base built without
its classifier and average-pooled, every image's features extracted once per
split (`feature_cache.extract`), then a head fitted full-batch on the features.
Works from any folder; DATA is laid out as DATA/{train,validation,test}/<label>/<image>.

  python examples/linear_probe.py --data=DATA --image_size=224 --steps=300
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from catsdogs_jax import defaults, models
from catsdogs_jax.data import feature_cache, input_pipeline
from catsdogs_jax.runtime import parallel
from catsdogs_jax.weights import loading

WEIGHTS = 'pretrained:efficientnet_lite0'


def extract_features(config, mesh):
  """{'train' | 'validation' | 'test': (features [N, 1280], labels [N])} of the frozen base."""
  loaded = loading.read(WEIGHTS)
  base = models.MODELS['efficientnet_lite0'](num_outputs=1, include_top=False, pooling='avg')
  abstract = models.abstract_variables(base, models.input_shape(config))
  # Every base weight must come from the file; only the ImageNet classifier is left out.
  variables = loading.merge_variables(abstract, loaded, dont_load=('^predictions/',))
  info = input_pipeline.describe(config)
  features = {}
  for role, split in input_pipeline.config_splits(config).items():
    images = input_pipeline.ImagePipeline(config, split, info.class_names)
    # The weights' own input scaling ('inception': (x - 127) / 128), applied on the device.
    features[role] = feature_cache.extract(
        base, variables, images, mesh, loaded.metadata['preprocess']
    )
  return features, info.class_names


def fit_logistic_regression(x, y, num_classes, steps, learning_rate=1e-2, l2=1e-4):
  """Softmax regression on standardised features, full batch with Adam."""
  mean, std = x.mean(0), x.std(0) + 1e-6  # from the training features only
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss_fn(params, x, y):
    logits = ((x - mean) / std) @ params['w'] + params['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * jnp.sum(params['w'] ** 2)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)

  def accuracy(x, y):
    logits = ((x - mean) / std) @ params['w'] + params['b']
    return float(jnp.mean(jnp.argmax(logits, -1) == y))

  return accuracy, float(loss)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='image folder: split/label/image')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch_size', type=int, default=32, help='images per extraction batch')
  args = parser.parse_args(argv)

  config = defaults.get_config()
  config.data.dataset = f'folder:{args.data}'
  config.data.train_split, config.data.eval_split, config.data.test_split = (
      'train',
      'validation',
      'test',
  )
  config.data.image_size = args.image_size
  config.batch_size = args.batch_size

  features, class_names = extract_features(config, parallel.create_mesh())
  (x, y), (x_val, y_val), (x_test, y_test) = (
      features['train'],
      features['validation'],
      features['test'],
  )
  print(f'features: train {x.shape} validation {x_val.shape} test {x_test.shape}', flush=True)
  accuracy, loss = fit_logistic_regression(x, y, len(class_names), args.steps)
  result = {
      'train_loss': loss,
      'train_accuracy': accuracy(x, y),
      'val_accuracy': accuracy(x_val, y_val),
      'test_accuracy': accuracy(x_test, y_test),
  }
  print(' '.join(f'{k}={v:.4f}' for k, v in result.items()), flush=True)
  return result


if __name__ == '__main__':
  main()
