"""A run assembled from its config, every check done before heavy work: `build`."""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh

from catsdogs_jax import models
from catsdogs_jax.data import augment, preprocessing
from catsdogs_jax.models import abstract_variables, summary
from catsdogs_jax.runtime import checkpointing, parallel, workdir_files
from catsdogs_jax.training import config_checks, optimizers
from catsdogs_jax.training.steps import mixup_enabled
from catsdogs_jax.training.train_state import abstract_state, ema_enabled, make_init_fn
from catsdogs_jax.weights import loading


@dataclasses.dataclass
class Experiment:
  """Everything one run is made of; complete when `build` returns it."""

  config: ml_collections.ConfigDict  # resolved (see `build`): what config.json records
  workdir: str
  info: 'input_pipeline.DatasetInfo'  # noqa: F821 (TensorFlow only where data is read)
  model: nn.Module
  mesh: Mesh
  steps_per_epoch: int
  tx: optax.GradientTransformation
  schedule: Callable
  plateau: optax.GradientTransformationExtraArgs
  init_fn: Callable
  input_shape: Tuple[int, ...]  # (H, W, C) of the model's input (features when extracting)
  pipeline: Callable  # split -> batches (images, or cached features)
  checkpoints: checkpointing.Checkpoints
  loaded: Optional[loading.LoadedWeights] = None  # config.init_from, put into init_state()
  lock: Optional[workdir_files.Lock] = None  # held while training; None when read only

  def release(self):
    if self.lock is not None:
      self.lock.release()

  def abstract_state(self):
    """Shapes, dtypes and shardings of the TrainState, without computing it."""
    return abstract_state(self.init_fn, self.mesh, self.config.seed)

  def init_state(self):
    """A fresh state; with init_from, its parameters come from those weights."""
    state = parallel.jit_init(self.init_fn, self.mesh)(jax.random.PRNGKey(self.config.seed))
    if self.loaded is None:
      return state
    initialised = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
    merged = loading.merge_variables(initialised, self.loaded, self.config.dont_load)
    state = state.replace(**jax.device_put(merged, parallel.replicated(self.mesh)))
    if state.ema:  # the average starts at the loaded weights (its own copy: buffers are donated)
      state = state.replace(ema=jax.device_put(merged, parallel.replicated(self.mesh)))
    return state


@dataclasses.dataclass(frozen=True)
class FeatureHead:
  """config.features: a head trained on the cached features of a frozen pretrained base."""

  model: nn.Module  # the head alone
  input_shape: Tuple[int, ...]  # one image's features
  pipeline: Callable  # split -> batches of cached features
  config: ml_collections.ConfigDict  # preprocessing 'none': the base already preprocessed


def _head_model(config):
  """The head trained on cached features (config.features.enabled)."""
  from catsdogs_jax.data import feature_cache
  from catsdogs_jax.models.initializers import get_initializer

  return feature_cache.HeadModel(
      head=config.model.head,
      num_outputs=models.num_outputs(config),
      head_units=config.model.head_units or 256,
      dropout_rate=config.model.dropout_rate,
      kernel_init=get_initializer(config.model.kernel_init, config.model.init_stddev),
  )


def _feature_extraction(config, loaded: Optional[loading.LoadedWeights], info, mesh) -> FeatureHead:
  """The head, its input and data for config.features, the base's weights checked exactly."""
  from catsdogs_jax.data import feature_cache, input_pipeline

  if loaded is None or not config.model.head:
    raise config_checks.ConfigError(
        'config.features.enabled needs config.init_from (the '
        'pretrained base) and config.model.head (what to train).'
    )
  if augment.is_enabled(config.augment):
    raise config_checks.ConfigError(
        "config.features.enabled computes each image's features once, so it cannot augment; "
        'turn config.augment off, or train end to end (configs/vgg16_frozen_aug.py).'
    )
  if mixup_enabled(config.mixup):
    raise config_checks.ConfigError(
        'config.features.enabled trains on cached features, not images, so it cannot mix '
        'images; set config.mixup.mixup_alpha and config.mixup.cutmix_alpha to 0, or train '
        'end to end.'
    )
  if config.eval_flip:
    raise config_checks.ConfigError(
        'config.features.enabled evaluates cached features of the unmirrored images, so '
        'config.eval_flip would be ignored; turn it off, or evaluate end to end.'
    )
  base_config = config.copy_and_resolve_references()
  base_config.model.head, base_config.model.head_units = None, None
  base = models.create_model(base_config)
  size = models.input_shape(config)
  abstract = abstract_variables(base, size)
  # Exact (but for config.dont_load, e.g. an unused ImageNet classifier), or it says why.
  variables = loading.merge_variables(abstract, loaded, config.dont_load)
  feature_shape = jax.eval_shape(
      base.apply, abstract, jax.ShapeDtypeStruct((1, *size), np.float32)
  ).shape[1:]
  head = _head_model(config)
  head_config = config.copy_and_resolve_references()
  head_config.data.preprocess = 'none'  # the base already preprocessed and ran

  def pipeline(split):
    images = input_pipeline.ImagePipeline(config, split, info.class_names)
    feats, labels = feature_cache.cached_features(
        config, split, base, variables, images, mesh, loaded.metadata
    )
    return feature_cache.FeaturePipeline(
        head_config, feats, labels, images.examples_per_process, images.local_batch
    )

  return FeatureHead(head, tuple(feature_shape), pipeline, head_config)


def _state_signature(config, steps_per_epoch: int, input_shape) -> tuple:
  """The structure, shapes and dtypes of the train state a config makes, computed without running it."""
  if config.features.enabled:  # a head on the cached features of `input_shape`
    model = _head_model(config)
  else:
    model = models.create_model(config)
    input_shape = models.input_shape(config)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch)
  init_fn = make_init_fn(
      model, tx, optimizers.create_plateau(config), input_shape, ema=ema_enabled(config)
  )
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  return jax.tree.structure(shapes), [(x.shape, x.dtype) for x in jax.tree.leaves(shapes)]


def build(
    config,
    workdir: str,
    read_only: bool = False,
    devices: Optional[list] = None,
    roles: Optional[Sequence[str]] = None,
) -> Experiment:
  """Checks config, data, model, weights and workdir (cheap checks first), then assembles a run.

  The run's config is a new, resolved one (`config` is left as it is): train_from
  written out as `trainable`, preprocess 'auto' as the init_from weights' own, and
  for config.features the head's. Read only, `roles` names the splits the caller
  will read ('test'; () for none): the others, and the class names, come from the
  workdir's dataset.json (runs from before it check every split).
  """
  from catsdogs_jax.data import input_pipeline  # TensorFlow only where data is read

  if not read_only:
    workdir_files.check_workdir_path(workdir)
  mesh = parallel.create_mesh(devices)
  config_checks.validate_config(config, num_devices=mesh.size)
  model = models.create_model(config)
  config_checks.check_image_size(config, model)
  resolved = config_checks.resolve_train_from(config, model)
  loaded = None
  if resolved.init_from:  # may download and convert published weights: after the cheap checks
    loaded = loading.read(resolved.init_from)
    resolved = _with_preprocessing_of(resolved, loaded)
    if resolved.model.adaptive_pool != config.model.adaptive_pool:
      model = models.create_model(resolved)
  info = _dataset_info(resolved, workdir, read_only, roles)
  steps_per_epoch = (info.num_examples['train'] // jax.process_count()) // (
      resolved.batch_size // jax.process_count()
  )
  config_checks.check_dataset(resolved, info, steps_per_epoch)
  input_shape = models.input_shape(resolved)
  pipeline = lambda split: input_pipeline.ImagePipeline(resolved, split, info.class_names)
  if resolved.features.enabled:
    head = _feature_extraction(resolved, loaded, info, mesh)
    model, input_shape, pipeline, resolved = (
        head.model,
        head.input_shape,
        head.pipeline,
        head.config,
    )
    loaded = None  # the weights went into the base; the head starts fresh
  tx, schedule = optimizers.create_optimizer(resolved, steps_per_epoch)
  plateau = optimizers.create_plateau(resolved)
  init_fn = make_init_fn(model, tx, plateau, input_shape, ema=ema_enabled(resolved))
  abstract = abstract_state(init_fn, mesh, resolved.seed)
  if loaded is not None:  # fails listing what differs, before any training
    loading.merge_variables(
        {'params': abstract.params, 'batch_stats': abstract.batch_stats}, loaded, resolved.dont_load
    )
  lock = None if read_only else workdir_files.Lock(workdir)
  try:
    if checkpointing.has_checkpoints(workdir):
      workdir_files.check_config_change(
          workdir, resolved, lambda c: _state_signature(c, steps_per_epoch, input_shape)
      )
    workdir_files.check_model(
        workdir, workdir_files.model_signature(resolved, abstract.params), write=not read_only
    )
    checkpoints = checkpointing.Checkpoints(workdir, resolved, read_only=read_only)
    if not read_only:
      workdir_files.write_run_config(workdir, resolved)
      workdir_files.write_dataset_info(workdir, info.class_names, info.num_examples)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  logging.info(
      'dataset %s: classes %s, images %s',
      resolved.data.dataset,
      info.class_names,
      info.num_examples,
  )
  logging.info(
      'model %s\n%s',
      resolved.model.name,
      summary.model_summary(
          model,
          {'params': abstract.params, 'batch_stats': abstract.batch_stats},
          input_shape,
          frozen=lambda path: optimizers.is_frozen(path, resolved),
      ),
  )
  return Experiment(
      config=resolved,
      workdir=workdir,
      info=info,
      model=model,
      mesh=mesh,
      steps_per_epoch=steps_per_epoch,
      tx=tx,
      schedule=schedule,
      plateau=plateau,
      init_fn=init_fn,
      input_shape=tuple(input_shape),
      pipeline=pipeline,
      checkpoints=checkpoints,
      loaded=loaded,
      lock=lock,
  )


def _dataset_info(config, workdir: str, read_only: bool, roles: Optional[Sequence[str]]):
  """The dataset's classes and split sizes: every split checked, or read only with `roles`, those
  splits checked against the classes the run trained on and the others as it saw them."""
  from catsdogs_jax.data import input_pipeline

  saved = workdir_files.read_dataset_info(workdir) if read_only and roles is not None else None
  if saved is None:
    return input_pipeline.describe(config)
  checked = input_pipeline.describe(config, roles, saved['class_names'])
  return input_pipeline.DatasetInfo(
      checked.class_names, {**saved['num_examples'], **checked.num_examples}
  )


def _with_preprocessing_of(config, loaded: loading.LoadedWeights):
  """A copy of `config` whose preprocess 'auto' is the weights' own (and, for torchvision's VGG
  top, its adaptive pool)."""
  resolved = config.copy_and_resolve_references()
  resolved.data.preprocess = preprocessing.resolve(config.data.preprocess, loaded.metadata)
  pool = loaded.metadata.get('adaptive_pool')
  if (
      pool
      and config.model.adaptive_pool is None
      and loaded.metadata.get('model') == config.model.name
  ):
    # torchvision's VGG top: the map is pooled to 7x7 first, so the top fits any image size.
    resolved.model.adaptive_pool = tuple(pool)
  logging.info(
      'initialising from %s (%s, preprocessing %r)',
      config.init_from,
      loaded.metadata.get('source'),
      resolved.data.preprocess,
  )
  return resolved
