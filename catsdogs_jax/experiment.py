"""Everything a run is built from, checked and assembled before any heavy work."""

import dataclasses
from typing import Any, Callable, Optional

import jax
import optax
from absl import logging
from jax.sharding import Mesh

from catsdogs_jax import (checkpointing, models, optimizers, parallel, preprocessing, summary,
                          validation, weights)
from catsdogs_jax.train_state import make_init_fn


@dataclasses.dataclass
class Experiment:
  config: Any
  workdir: str
  info: Any                     # input_pipeline.DatasetInfo
  model: Any
  mesh: Mesh
  steps_per_epoch: int
  tx: optax.GradientTransformation
  schedule: Callable
  plateau: optax.GradientTransformationExtraArgs
  init_fn: Callable
  checkpoints: checkpointing.Checkpoints
  loaded: Optional[tuple] = None   # (params, batch_stats, metadata) of config.init_from

  @property
  def image_shape(self):
    return (self.config.image_size, self.config.image_size, self.config.channels)

  def abstract_state(self):
    """Shapes, dtypes and shardings of the TrainState, without computing it."""
    rep = parallel.replicated(self.mesh)
    shapes = jax.eval_shape(self.init_fn, jax.random.PRNGKey(self.config.seed))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)

  def init_state(self):
    """A fresh state; with init_from, its parameters come from those weights."""
    state = parallel.jit_init(self.init_fn, self.mesh)(jax.random.PRNGKey(self.config.seed))
    if self.loaded is None:
      return state
    params, stats, _ = self.loaded
    rep = parallel.replicated(self.mesh)
    merge = lambda init, tree, what: jax.device_put(weights.merge(
        jax.device_get(init), tree, self.config.dont_load, what), rep)
    return state.replace(
        params=merge(state.params, params, 'parameters'),
        batch_stats=merge(state.batch_stats, stats, 'BatchNorm statistics')
        if state.batch_stats else state.batch_stats)

  def pipeline(self, split: str):
    from catsdogs_jax import input_pipeline  # TensorFlow only where data is read
    return input_pipeline.ImagePipeline(self.config, split, self.info.class_names)


def build(config, workdir: str, read_only: bool = False,
          devices: Optional[list] = None) -> Experiment:
  """Validates config, data, model and workdir (cheap checks first), then assembles a run."""
  from catsdogs_jax import input_pipeline
  mesh = parallel.create_mesh(devices)
  validation.validate_config(config, num_devices=mesh.size)
  loaded = None
  if config.init_from:
    loaded = weights.read(config.init_from)
    config = config.copy_and_resolve_references()
    config.preprocess = preprocessing.resolve(config.preprocess, loaded[2])
    logging.info('initialising from %s (%s, preprocessing %r)', config.init_from,
                 loaded[2].get('source'), config.preprocess)
  model = models.create_model(config)
  validation.check_image_size(config, model)
  info = input_pipeline.describe(config)
  steps_per_epoch = (info.num_examples['train'] // jax.process_count()) // (
      config.batch_size // jax.process_count())
  validation.check_dataset(config, info, steps_per_epoch)
  tx, schedule = optimizers.create_optimizer(config, steps_per_epoch)
  plateau = optimizers.create_plateau(config)
  init_fn = make_init_fn(model, tx, plateau, (config.image_size, config.image_size, config.channels))
  exp = Experiment(config, workdir, info, model, mesh, steps_per_epoch, tx, schedule, plateau,
                   init_fn, checkpoints=None, loaded=loaded)
  abstract = exp.abstract_state()
  if loaded is not None:   # fails listing what differs, before any training
    weights.merge(abstract.params, loaded[0], config.dont_load)
  checkpointing.check_workdir_model(
      workdir, checkpointing.model_signature(config, abstract.params), write=not read_only)
  exp.checkpoints = checkpointing.Checkpoints(workdir, config, read_only=read_only)
  if not read_only:
    checkpointing.write_run_config(workdir, config)
  logging.info('dataset %s: classes %s, images %s', config.dataset, info.class_names,
               info.num_examples)
  logging.info('model %s\n%s', config.model.name, summary.parameter_table(
      abstract.params, abstract.batch_stats, config))
  return exp
