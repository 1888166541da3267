"""--mode=summary: a config's model, layer by layer, without data, weights or a workdir."""

from catsdogs_jax import models
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
