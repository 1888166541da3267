"""The pure train, eval and predict steps (jitted once, over the device mesh, in
`runtime.parallel`), and exact evaluation of a state over a split."""

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from catsdogs_jax.data import augment
from catsdogs_jax.data.preprocessing import get_preprocessor
from catsdogs_jax.models import batch_norm
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import losses
from catsdogs_jax.training.metrics import EvalMetrics, TrainMetrics
from catsdogs_jax.training.optimizers import frozen_mask, is_frozen


def model_variables(state, params=None):
  """The variables `model.apply` takes: `params` (default the state's) and BatchNorm statistics."""
  params = state.params if params is None else params
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def _all_finite(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model, tx: optax.GradientTransformation, config):
  """Returns `train_step(state, batch) -> (state, TrainMetrics, finite)`."""
  preprocess = get_preprocessor(config.data.preprocess)
  compute_dtype = jnp.bfloat16 if config.half_precision else jnp.float32

  def train_step(state, batch):
    dropout_rng, augment_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images = augment.augment_batch(augment_rng, batch['image'], config.augment)
    images = preprocess(images).astype(compute_dtype)
    labels = batch['label']

    def loss_fn(params):
      # Frozen parameters are constants here: no gradient flows into them, and
      # JAX does not differentiate the frozen part of the network at all.
      # Frozen BatchNorm layers normalise with, and keep, their running statistics;
      # with config.batch_norm_running_average every BatchNorm layer does.
      params = jax.tree.map(
          lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p,
          params,
          frozen_mask(params, config),
      )
      with batch_norm.inference_where(
          lambda path: config.batch_norm_running_average or is_frozen(path, config)
      ):
        logits, new_vars = model.apply(
            model_variables(state, params),
            images,
            train=True,
            rngs={'dropout': dropout_rng},
            mutable=['batch_stats'],
        )
      per_example = losses.per_example_loss(logits, labels, config.loss)
      return per_example.mean(), (per_example, logits, new_vars)

    grads, (per_example, logits, new_vars) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_vars.get('batch_stats', state.batch_stats),
        opt_state=opt_state,
    )
    finite = jnp.isfinite(per_example).all() & _all_finite(grads)
    skip = (~finite) if config.nan_policy == 'skip' else jnp.zeros((), bool)
    # A skipped update leaves the state as it was; the step (so data order and RNG) moves on.
    new_state = jax.tree.map(
        lambda new, old: jnp.where(skip, old, new), new_state, state.replace(step=state.step + 1)
    )
    correct = losses.predictions(logits, config.loss) == labels
    metrics = TrainMetrics.single_from_model_output(
        loss=per_example,
        accuracy=correct.astype(jnp.float32),
        mask=jnp.broadcast_to(~skip, per_example.shape),
        skipped=skip,
    )
    return new_state, metrics, finite

  return train_step


def _inference_logits(model, config):
  preprocess = get_preprocessor(config.data.preprocess)
  compute_dtype = jnp.bfloat16 if config.half_precision else jnp.float32

  def logits_fn(state, images):
    images = preprocess(images).astype(compute_dtype)
    variables = model_variables(state)
    logits = model.apply(variables, images, train=False)
    if config.eval_flip:  # a cat is a cat in the mirror: average both views' logits
      mirrored = model.apply(variables, images[:, :, ::-1], train=False)
      logits = (logits + mirrored) / 2
    return logits

  return logits_fn


def make_eval_step(model, config):
  """Returns `eval_step(state, batch) -> EvalMetrics`; `batch['mask']` marks real images."""
  logits_fn = _inference_logits(model, config)

  def eval_step(state, batch):
    logits = logits_fn(state, batch['image'])
    labels = batch['label']
    predictions = losses.predictions(logits, config.loss)
    return EvalMetrics.single_from_model_output(
        loss=losses.per_example_loss(logits, labels, config.loss),
        accuracy=(predictions == labels).astype(jnp.float32),
        labels=labels,
        predictions=predictions,
        num_classes=config.data.num_classes,
        mask=batch['mask'],
    )

  return eval_step


def make_predict_step(model, config):
  """Returns `predict_step(state, batch) -> {'probabilities': [B, C], 'loss': [B]}` per image.

  The loss is against `batch['label']`; a batch without labels (new photos) gets 0.
  """
  logits_fn = _inference_logits(model, config)

  def predict_step(state, batch):
    logits = logits_fn(state, batch['image'])
    if 'label' in batch:
      loss = losses.per_example_loss(logits, batch['label'], config.loss)
    else:
      loss = jnp.zeros(logits.shape[:1], jnp.float32)
    return {'probabilities': losses.probabilities(logits, config.loss), 'loss': loss}

  return predict_step


def run_eval(
    eval_step, state, pipeline, mesh, after_batch: Optional[Callable[[int], Any]] = None
) -> Dict[str, Any]:
  """Loss, accuracy and confusion matrix over every image of `pipeline` exactly once.

  `after_batch(index)` is called after each batch is dispatched (the train loop's hooks).
  """
  total = None
  for index, batch in enumerate(parallel.prefetch_to_mesh(pipeline.eval_batches(), mesh)):
    metrics = eval_step(state, batch)
    if after_batch is not None:
      after_batch(index)
    total = metrics if total is None else total.merge(metrics)
  result = jax.device_get(total.compute())
  confusion = np.asarray(result['confusion'])
  return {
      'loss': float(result['loss']),
      'accuracy': float(result['accuracy']),
      'confusion': confusion.tolist(),
      'num_images': int(confusion.sum()),
  }
