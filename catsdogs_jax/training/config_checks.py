"""Config checks that run before any heavy work, each failing with the problem and the fix."""

import jax
import numpy as np
from absl import logging
from flax import linen as nn

from catsdogs_jax.data import augment
from catsdogs_jax.data.preprocessing import PREPROCESSORS
from catsdogs_jax.models import (
    MODELS,
    abstract_variables,
    create_model,
    heads,
    input_shape,
    layers_from,
)
from catsdogs_jax.models.initializers import INITIALIZERS
from catsdogs_jax.registry import lookup
from catsdogs_jax.training import losses, optimizers

# The other choices are registries beside the code that builds them; these are
# plain names that their users compare or pass on (tf.image.resize's methods).
MONITORS = ('val_loss', 'val_accuracy')
NAN_POLICIES = ('stop', 'skip')
RESIZE_METHODS = ('bilinear', 'nearest', 'bicubic', 'area', 'lanczos3', 'mitchellcubic')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the choices."""


def _choice(value, choices, field: str):
  lookup(dict.fromkeys(choices), value, field, error=ConfigError)


def validate_config(config, num_devices: int = None):
  """Checks names, ranges and consistency of the config fields."""
  _choice(config.model.name, MODELS, 'model.name')
  _choice(config.optimizer.name, optimizers.OPTIMIZERS, 'optimizer.name')
  _choice(config.schedule.name, optimizers.SCHEDULES, 'schedule.name')
  _choice(config.loss, losses.LOSSES, 'loss')
  _choice(config.data.preprocess, PREPROCESSORS, 'data.preprocess')
  _choice(config.model.kernel_init, INITIALIZERS, 'model.kernel_init')
  if config.model.pooling is not None:  # None: the architecture's default
    _choice(config.model.pooling, heads.POOLINGS, 'model.pooling')
  if config.model.head:  # None or '': no new head
    _choice(config.model.head, heads.HEADS, 'model.head')
  _choice(config.data.resize_method, RESIZE_METHODS, 'data.resize_method')
  _choice(config.schedule.plateau_monitor, MONITORS, 'schedule.plateau_monitor')
  _choice(config.early_stopping.monitor, MONITORS, 'early_stopping.monitor')
  _choice(config.checkpoint.best_monitor, MONITORS, 'checkpoint.best_monitor')
  _choice(config.data.channels, (1, 3), 'data.channels')
  _choice(config.nan_policy, NAN_POLICIES, 'nan_policy')
  _choice(config.augment.fill_mode, augment.FILL_MODES, 'augment.fill_mode')
  _choice(config.augment.interpolation, augment.INTERPOLATIONS, 'augment.interpolation')
  for field in augment.RANDOM_FIELDS:
    value = config.augment[field]
    if isinstance(value, (int, float)) and value < 0:  # crop_scale, a pair: _check_crop
      raise ConfigError(f'config.augment.{field} must be >= 0, got {value}; 0 turns it off.')
  _check_crop(config.augment)
  if config.model.head == 'dense' and not config.model.pooling:
    raise ConfigError(
        "config.model.head='dense' is a dense layer on the pooled base; set "
        '--config.model.pooling=avg (or max), or choose another head.'
    )
  if config.model.head and config.model.head != 'dense' and config.model.pooling:
    raise ConfigError(
        f'config.model.head={config.model.head!r} works on the feature map; leave '
        'config.model.pooling unset, or use --config.model.head=dense on the pooled '
        'base.'
    )
  if config.train_from and config.frozen:
    raise ConfigError(
        f'config.train_from={config.train_from!r} decides which layers train; '
        'leave config.frozen (and config.trainable) empty with it.'
    )
  if config.train_from and config.features.enabled:
    raise ConfigError(
        'config.train_from fine-tunes the base, but config.features.enabled '
        'trains only a head on cached features; unset one of them.'
    )
  if config.augment.zoom_range >= 1:
    raise ConfigError(
        f'config.augment.zoom_range={config.augment.zoom_range} would allow a '
        'scale of 0 or less; use a value below 1 (the tutorials use 0.2).'
    )
  if config.loss == 'sigmoid' and config.data.num_classes != 2:
    raise ConfigError(
        f'config.loss="sigmoid" is a binary head but config.data.num_classes='
        f'{config.data.num_classes}; use --config.loss=softmax.'
    )
  for field, value in (
      ('batch_size', config.batch_size),
      ('num_epochs', config.num_epochs),
      ('data.image_size', config.data.image_size),
      ('data.num_classes', config.data.num_classes),
      ('log_every_steps', config.log_every_steps),
  ):
    if value <= 0:
      raise ConfigError(f'config.{field} must be positive, got {value}.')
  lf = config.lr_find
  if not 0 < lf.min_lr < lf.max_lr or lf.num_steps < 10 or lf.diverge_factor <= 1:
    raise ConfigError(
        f'config.lr_find needs 0 < min_lr < max_lr, num_steps >= 10 and '
        f'diverge_factor > 1; got min_lr={lf.min_lr}, max_lr={lf.max_lr}, '
        f'num_steps={lf.num_steps}, diverge_factor={lf.diverge_factor}.'
    )
  if config.max_skipped_steps < 1:
    raise ConfigError(
        f'config.max_skipped_steps must be at least 1, got {config.max_skipped_steps}.'
    )
  if config.checkpoint.keep < 1:
    raise ConfigError(f'config.checkpoint.keep must be at least 1, got {config.checkpoint.keep}.')
  _check_training_options(config)
  try:
    create_model(config)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  num_devices = jax.device_count() if num_devices is None else num_devices
  if config.batch_size % num_devices:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the '
        f'{num_devices} devices; use a multiple of {num_devices}.'
    )


def _pair(value):
  """(low, high) as floats when `value` is a pair of numbers with low <= high, else None."""
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError):
    return None
  return (low, high) if low <= high else None


def _check_crop(cfg):
  """The random resized crop's ranges: area fractions in (0, 1], positive aspect ratios."""
  if cfg.crop_scale is not None:
    scale = _pair(cfg.crop_scale)
    if scale is None or not 0 < scale[0] <= scale[1] <= 1:
      raise ConfigError(
          f'config.augment.crop_scale={cfg.crop_scale} must be (min, max) area fractions with '
          '0 < min <= max <= 1; use e.g. --config.augment.crop_scale="(0.08, 1.0)" '
          "(torchvision's), or None for no crop."
      )
  ratio = _pair(cfg.crop_ratio)
  if ratio is None or not 0 < ratio[0]:
    raise ConfigError(
        f'config.augment.crop_ratio={cfg.crop_ratio} must be (min, max) aspect ratios '
        '(width / height) with 0 < min <= max; the default is (3/4, 4/3).'
    )


def _check_training_options(config):
  """Label smoothing, mixup / CutMix and the weights' average: values that mean something."""
  ls = config.label_smoothing
  if not 0 <= ls < 1:
    raise ConfigError(
        f'config.label_smoothing={ls} must be in [0, 1) (the weight moved from the true class '
        'to the uniform distribution); use e.g. 0.1, or 0 for off.'
    )
  mix = config.mixup
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if mix[field] < 0:
      raise ConfigError(
          f"config.mixup.{field}={mix[field]} must be >= 0 (the Beta distribution's alpha); "
          'use e.g. 0.8 for mixup, 1.0 for CutMix, or 0 for off.'
      )
  for field in ('prob', 'switch_prob'):
    if not 0 <= mix[field] <= 1:
      raise ConfigError(
          f'config.mixup.{field}={mix[field]} is a probability: use a value in [0, 1].'
      )
  ema = config.ema
  if not 0 <= ema.decay < 1:
    raise ConfigError(
        f'config.ema.decay={ema.decay} must be in [0, 1) (1 would never move from the initial '
        'weights); use e.g. 0.999, or 0 for off.'
    )
  if ema.warmup_power < 0:
    raise ConfigError(
        f"config.ema.warmup_power={ema.warmup_power} must be >= 0; use 0.75 (timm's for runs "
        'under a million steps), or 0 for no warm-up.'
    )


def _is_empty(value) -> bool:
  return 0 in getattr(value, 'shape', (1,))


def _fits(model, size: int, channels: int) -> bool:
  """Whether the model runs on size x size inputs with no empty feature map.

  VALID convolutions and pools clamp a map that shrinks too far to size 0; the
  layers after it then fail (a Dense on a zero-size flatten divides by its
  fan-in of 0) or make empty parameters. An error raised after some layer got
  an empty input means too small; any other error is the model's own and
  propagates.
  """
  emptied = []

  def watch(next_fun, args, kwargs, context):
    if not emptied and any(_is_empty(a) for a in jax.tree.leaves((args, kwargs))):
      emptied.append(context.module.path)
    return next_fun(*args, **kwargs)

  try:
    with nn.intercept_methods(watch):
      variables = abstract_variables(model, (size, size, channels))
  except Exception:
    if emptied:
      return False
    raise
  return not emptied and all(np.prod(leaf.shape) > 0 for leaf in jax.tree.leaves(variables))


def smallest_image_size(model, channels: int, start: int = 1) -> int:
  """The smallest square input (>= start) on which the model has no empty feature map."""
  if _fits(model, start, channels):
    return start
  low, high = start, max(2 * start, 8)
  while not _fits(model, high, channels):
    low, high = high, high * 2
    if high > 4096:
      raise ConfigError('The model accepts no image size up to 4096 pixels.')
  while high - low > 1:  # binary search for the smallest size that fits
    mid = (low + high) // 2
    low, high = (low, mid) if _fits(model, mid, channels) else (mid, high)
  return high


def check_image_size(config, model):
  """Fails when config.data.image_size is too small for the architecture, naming the minimum."""
  try:
    smallest = smallest_image_size(model, config.data.channels, config.data.image_size)
  except ConfigError:
    raise ConfigError(
        f'Model {config.model.name!r} does not accept '
        f'{config.data.image_size}x{config.data.image_size} images.'
    ) from None
  if smallest == config.data.image_size:
    return
  raise ConfigError(
      f'config.data.image_size={config.data.image_size} is too small for model {config.model.name!r}: '
      f'its feature maps shrink to nothing. Use --config.data.image_size={smallest} or more.'
  )


def resolve_train_from(config, model):
  """The config with config.trainable set to config.train_from's layer and the ones after it.

  A config without train_from comes back as it is; the resolved one is what
  config.json records, so resuming compares like with like.
  """
  if not config.train_from:
    return config
  try:
    trainable = layers_from(model, input_shape(config), config.train_from)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.trainable and tuple(config.trainable) != trainable:  # a resolved config passes
    raise ConfigError(
        f'config.train_from={config.train_from!r} decides which layers train; '
        'leave config.trainable empty with it.'
    )
  config = config.copy_and_resolve_references()
  config.trainable = trainable
  logging.info(
      'config.train_from=%r: %d layers train (%s ... %s), the ones before are frozen',
      config.train_from,
      len(trainable),
      trainable[0],
      trainable[-1],
  )
  return config


def check_dataset(config, info, steps_per_epoch: int):
  """The dataset and the config agree on classes, and an epoch has at least one step."""
  if len(info.class_names) != config.data.num_classes:
    raise ConfigError(
        f'The dataset has {len(info.class_names)} classes ({", ".join(info.class_names)}) '
        f'but config.data.num_classes={config.data.num_classes}; set --config.data.num_classes='
        f'{len(info.class_names)}.'
    )
  if steps_per_epoch == 0:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the training split '
        f'({info.num_examples["train"]} images): an epoch would have no step.'
    )
