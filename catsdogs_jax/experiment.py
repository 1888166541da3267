"""Everything a run is built from, checked and assembled before any heavy work."""

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from catsdogs_jax import (augment, checkpointing, models, optimizers, parallel, preprocessing,
                          summary, validation, weights)
from catsdogs_jax import workdir as workdir_files
from catsdogs_jax.train_state import abstract_variables, make_init_fn


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
  input_shape: tuple            # (H, W, C) of the model's input (features when extracting)
  checkpoints: checkpointing.Checkpoints
  loaded: Optional[tuple] = None   # (params, batch_stats, metadata) of config.init_from
  make_pipeline: Optional[Callable] = None   # split -> batches; default: ImagePipeline
  lock: Optional[workdir_files.Lock] = None  # held while training; None when read only

  def release(self):
    if self.lock is not None:
      self.lock.release()

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
    if self.make_pipeline is not None:
      return self.make_pipeline(split)
    from catsdogs_jax import input_pipeline  # TensorFlow only where data is read
    return input_pipeline.ImagePipeline(self.config, split, self.info.class_names)


def _head_model(config):
  """The head trained on cached features (config.features.enabled)."""
  from catsdogs_jax import features
  from catsdogs_jax.models.initializers import get_initializer
  return features.HeadModel(
      head=config.model.head, num_outputs=models.num_outputs(config),
      head_units=config.model.head_units or 256, dropout_rate=config.model.dropout_rate,
      kernel_init=get_initializer(config.model.kernel_init, config.model.init_stddev))


def _feature_extraction(config, loaded, info, mesh):
  """(head model, feature shape, pipeline factory, head config) for config.features."""
  from catsdogs_jax import features, input_pipeline
  if loaded is None or not config.model.head:
    raise validation.ConfigError('config.features.enabled needs config.init_from (the '
                                 'pretrained base) and config.model.head (what to train).')
  if augment.is_enabled(config.augment):
    raise validation.ConfigError(
        'config.features.enabled computes each image\'s features once, so it cannot augment; '
        'turn config.augment off, or train end to end (configs/vgg16_frozen_aug.py).')
  if config.eval_flip:
    raise validation.ConfigError(
        'config.features.enabled evaluates cached features of the unmirrored images, so '
        'config.eval_flip would be ignored; turn it off, or evaluate end to end.')
  base_config = config.copy_and_resolve_references()
  base_config.model.head, base_config.model.head_units = None, None
  base = models.create_model(base_config)
  size = (config.image_size, config.image_size, config.channels)
  abstract = abstract_variables(base, size)
  # Exact (but for config.dont_load, e.g. an unused ImageNet classifier), or it says why.
  variables = {'params': weights.merge(abstract['params'], loaded[0], config.dont_load)}
  if 'batch_stats' in abstract:
    variables['batch_stats'] = weights.merge(abstract['batch_stats'], loaded[1],
                                             config.dont_load, what='BatchNorm statistics')
  feature_shape = jax.eval_shape(base.apply, abstract, jax.ShapeDtypeStruct((1, *size),
                                                                            np.float32)).shape[1:]
  head = _head_model(config)
  head_config = config.copy_and_resolve_references()
  head_config.preprocess = 'none'   # the base already preprocessed and ran

  def make_pipeline(split):
    images = input_pipeline.ImagePipeline(config, split, info.class_names)
    feats, labels = features.cached_features(config, split, base, variables, images, mesh,
                                             loaded[2])
    return features.FeaturePipeline(head_config, feats, labels, images.examples_per_process,
                                    images.local_batch)

  return head, tuple(feature_shape), make_pipeline, head_config


def _state_signature(config, steps_per_epoch: int, input_shape) -> tuple:
  """The structure, shapes and dtypes of the train state a config makes, computed without running it."""
  if config.features.enabled:   # a head on the cached features of `input_shape`
    model = _head_model(config)
  else:
    model = models.create_model(config)
    input_shape = (config.image_size, config.image_size, config.channels)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch)
  init_fn = make_init_fn(model, tx, optimizers.create_plateau(config), input_shape)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  return jax.tree.structure(shapes), [(x.shape, x.dtype) for x in jax.tree.leaves(shapes)]


def build(config, workdir: str, read_only: bool = False,
          devices: Optional[list] = None) -> Experiment:
  """Validates config, data, model and workdir (cheap checks first), then assembles a run."""
  from catsdogs_jax import input_pipeline
  mesh = parallel.create_mesh(devices)
  validation.validate_config(config, num_devices=mesh.size)
  model = models.create_model(config)
  validation.check_image_size(config, model)
  config = validation.resolve_train_from(config, model)
  loaded = None
  if config.init_from:   # may download and convert published weights: after the cheap checks
    loaded = weights.read(config.init_from)
    config = config.copy_and_resolve_references()
    config.preprocess = preprocessing.resolve(config.preprocess, loaded[2])
    logging.info('initialising from %s (%s, preprocessing %r)', config.init_from,
                 loaded[2].get('source'), config.preprocess)
  input_shape = (config.image_size, config.image_size, config.channels)
  info = input_pipeline.describe(config)
  steps_per_epoch = (info.num_examples['train'] // jax.process_count()) // (
      config.batch_size // jax.process_count())
  validation.check_dataset(config, info, steps_per_epoch)
  make_pipeline = None
  if config.features.enabled:
    model, input_shape, make_pipeline, config = _feature_extraction(config, loaded, info, mesh)
    loaded = None   # the weights went into the base; the head starts fresh
  tx, schedule = optimizers.create_optimizer(config, steps_per_epoch)
  plateau = optimizers.create_plateau(config)
  init_fn = make_init_fn(model, tx, plateau, input_shape)
  exp = Experiment(config, workdir, info, model, mesh, steps_per_epoch, tx, schedule, plateau,
                   init_fn, tuple(input_shape), checkpoints=None, loaded=loaded, make_pipeline=make_pipeline)
  abstract = exp.abstract_state()
  if loaded is not None:   # fails listing what differs, before any training
    weights.merge(abstract.params, loaded[0], config.dont_load)
  if not read_only:
    exp.lock = workdir_files.Lock(workdir)
  try:
    if checkpointing.has_checkpoints(workdir):
      workdir_files.check_config_change(
          workdir, config, lambda c: _state_signature(c, steps_per_epoch, input_shape))
    workdir_files.check_model(
        workdir, workdir_files.model_signature(config, abstract.params), write=not read_only)
    exp.checkpoints = checkpointing.Checkpoints(workdir, config, read_only=read_only)
    if not read_only:
      workdir_files.write_run_config(workdir, config)
  except BaseException:
    exp.release()
    raise
  logging.info('dataset %s: classes %s, images %s', config.dataset, info.class_names,
               info.num_examples)
  logging.info('model %s\n%s', config.model.name, summary.model_summary(
      model, {'params': abstract.params, 'batch_stats': abstract.batch_stats}, input_shape,
      config))
  return exp
