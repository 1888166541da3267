"""--mode=summary: a config's model, layer by layer, without data, weights or a workdir; a
config and its augmentation in a few words."""

from typing import List

from catsdogs_jax import models
from catsdogs_jax.data import augment
from catsdogs_jax.models.summary import model_summary
from catsdogs_jax.training import config_checks
from catsdogs_jax.training.optimizers import is_frozen


def config_summary(config) -> str:
  """The summary of a config's model at its image size, without data, weights or a workdir."""
  config_checks.validate_config(config, num_devices=1)
  model = models.create_model(config)
  config = config_checks.resolve_train_from(config, model)
  shape = models.input_shape(config)
  return f'model {config.model.name} at {shape}\n' + model_summary(
      model,
      models.abstract_variables(model, shape),
      shape,
      frozen=lambda path: is_frozen(path, config),
  )


def describe_augmentation(cfg) -> str:
  """The active settings in a few words ('rotation 40, zoom 0.2, horizontal flip; fill nearest')."""
  parts: List[str] = []
  for field in augment.RANDOM_FIELDS:
    value, name = cfg[field], field.replace('_range', '').replace('_', ' ')
    if value is True:
      parts.append(name)
    elif isinstance(value, (tuple, list)):
      parts.append(f'{name} {"-".join(f"{v:g}" for v in value)}')
    elif value:
      parts.append(f'{name} {value:g}')
  if not parts:
    return 'no random transform'
  return ', '.join(parts) + f'; fill {cfg.fill_mode}'


def config_overview(config, source: str = '', overrides=None) -> str:
  """A run's config in three lines (config.json in the workdir holds every field)."""
  d, o, s = config.data, config.optimizer, config.schedule
  changed = ', '.join(f'{k}={v}' for k, v in (overrides or {}).items())
  lines = [
      f'config {source or "(given)"}' + (f' with {changed}' if changed else ''),
      f'  model {config.model.name}, {d.image_size} px x {d.channels}, {d.num_classes} classes, '
      f'loss {config.loss}; data {d.dataset} (train {d.train_split}, validation '
      f'{d.eval_split}, test {d.test_split})',
      f'  {o.name} lr {o.learning_rate:g} ({s.name}), batch {config.batch_size}, '
      f'{config.num_epochs} epochs, augment: {describe_augmentation(config.augment)}'
      + (f', init_from {config.init_from}' if config.init_from else ''),
  ]
  return '\n'.join(lines)
