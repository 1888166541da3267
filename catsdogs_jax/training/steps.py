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
from catsdogs_jax.training.train_state import ema_decay, update_ema

# fold_in(key, n) is split's n-th key under JAX's partitionable threefry: mixing draws
# from a number far from the indices that split (dropout, augmentation) hands out.
_MIX_STREAM = 0x6D697800


def model_variables(state, params=None):
  """The variables `model.apply` takes: `params` (default the state's) and BatchNorm statistics."""
  params = state.params if params is None else params
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def inference_variables(state):
  """The variables validation, evaluation and prediction apply: the average of the weights
  when the state keeps one (config.ema), else the weights themselves."""
  if not state.ema:
    return model_variables(state)
  return model_variables(state.replace(batch_stats=state.ema['batch_stats']), state.ema['params'])


# ----- mixup and CutMix (timm's Mixup in its 'batch' mode: one lam per batch, each example
# paired with the one at the mirrored position of the batch).


def mixup_enabled(cfg) -> bool:
  return bool(cfg.mixup_alpha) or bool(cfg.cutmix_alpha)


def mixup(images, targets, lam):
  """Each example and its partner in the reversed batch blended with weights lam, 1 - lam."""
  blend = lambda x: lam * x + (1.0 - lam) * x[::-1]
  return blend(images), blend(targets)


def cutmix_box(key, lam, height: int, width: int):
  """timm's CutMix box (top, bottom, left, right), rows and columns [top, bottom) x [left,
  right): sides floor(size * sqrt(1 - lam)) about a uniform centre, clipped to the image."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def cutmix(images, targets, box):
  """`box` of every [B, H, W, C] image replaced by its partner's; returns (images, targets,
  lam), lam being the fraction of each image left unpasted (timm's correct_lam)."""
  height, width = images.shape[1:3]
  top, bottom, left, right = box
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
  area = jnp.asarray((bottom - top) * (right - left), jnp.float32)
  lam = 1.0 - area / (height * width)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1], lam


def _symmetric_beta(key, alpha):
  """A draw of Beta(alpha, alpha): X / (X + Y) of two Gamma(alpha) variates, drawn together
  (one rejection sampler in the compiled step rather than jax.random.beta's two)."""
  log_gamma = jax.random.loggamma(key, alpha, (2,))
  return jnp.exp(log_gamma[0] - jax.nn.logsumexp(log_gamma))


def mix_batch(key, images, targets, cfg):
  """config.mixup on a batch: (images, targets, lam) with lam as the targets use it.

  As timm's Mixup: with probability `prob` the batch is mixed, by CutMix with probability
  `switch_prob` when both alphas are on (else by the one that is), lam ~ Beta(alpha, alpha)
  of the chosen one; unmixed, lam is 1 and images and targets come back as they were.
  """
  key_apply, key_switch, key_lam, key_box = jax.random.split(key, 4)
  use_mixup, use_cutmix = bool(cfg.mixup_alpha), bool(cfg.cutmix_alpha)
  if use_mixup and use_cutmix:
    chose_cutmix = jax.random.uniform(key_switch) < cfg.switch_prob
    alpha = jnp.where(chose_cutmix, cfg.cutmix_alpha, cfg.mixup_alpha)
  else:
    chose_cutmix = use_cutmix
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
  lam = _symmetric_beta(key_lam, alpha)
  lam = jnp.where(jax.random.uniform(key_apply) < cfg.prob, lam, 1.0)
  # lam 1 leaves the batch as it is: x * 1 + partner * 0, and an empty box.
  if not use_cutmix:
    return (*mixup(images, targets, lam), lam)
  box = cutmix_box(key_box, lam, *images.shape[1:3])
  cut_images, cut_targets, cut_lam = cutmix(images, targets, box)
  if not use_mixup:
    return cut_images, cut_targets, cut_lam
  mix_images, mix_targets = mixup(images, targets, lam)
  pick = lambda a, b: jnp.where(chose_cutmix, a, b)
  return pick(cut_images, mix_images), pick(cut_targets, mix_targets), pick(cut_lam, lam)


def _all_finite(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model, tx: optax.GradientTransformation, config):
  """Returns `train_step(state, batch) -> (state, TrainMetrics, finite)`.

  With config.label_smoothing or config.mixup the loss scores soft targets; without, the
  integer labels, exactly as before either existed.
  """
  preprocess = get_preprocessor(config.data.preprocess)
  compute_dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  mixing = mixup_enabled(config.mixup)
  soft = mixing or bool(config.label_smoothing)

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    dropout_rng, augment_rng = jax.random.split(step_rng)
    images = augment.augment_batch(augment_rng, batch['image'], config.augment)
    images = preprocess(images)
    labels = batch['label']
    targets = None
    if soft:
      targets = losses.soft_targets(labels, config.data.num_classes, config.label_smoothing)
    # Train accuracy counts each example against its dominant label (lam >= 1/2: its own).
    counted = labels
    if mixing:
      mix_rng = jax.random.fold_in(step_rng, _MIX_STREAM)
      images, targets, lam = mix_batch(mix_rng, images, targets, config.mixup)
      counted = jnp.where(lam >= 0.5, labels, labels[::-1])
    images = images.astype(compute_dtype)

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
      if targets is None:
        per_example = losses.per_example_loss(logits, labels, config.loss)
      else:
        per_example = losses.soft_per_example_loss(logits, targets, config.loss)
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
    if state.ema:  # the average follows the weights this step made (a skipped step: below)
      new_state = new_state.replace(
          ema=update_ema(
              state.ema,
              {'params': new_state.params, 'batch_stats': new_state.batch_stats},
              ema_decay(config.ema, new_state.step),
          )
      )
    finite = jnp.isfinite(per_example).all() & _all_finite(grads)
    skip = (~finite) if config.nan_policy == 'skip' else jnp.zeros((), bool)
    # A skipped update leaves the state as it was; the step (so data order and RNG) moves on.
    new_state = jax.tree.map(
        lambda new, old: jnp.where(skip, old, new), new_state, state.replace(step=state.step + 1)
    )
    correct = losses.predictions(logits, config.loss) == counted
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
    variables = inference_variables(state)
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
