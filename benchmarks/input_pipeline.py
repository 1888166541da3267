"""Input pipeline throughput: decode+resize, + augmentation, and whether it starves the train step.

  python benchmarks/input_pipeline.py [--data=../shared/data/cats_and_dogs_small] [--image_size=150]

Measures, on an image folder, images/s of
(1) tf.data decode+resize alone: full-size, with config.data.jpeg_draft (JPEGs decoded at a
    reduced libjpeg scale), and with drafts and resize_method='area'; and decoding alone;
(2) the same plus the on-device augmentation with the tutorial's settings;
(3) Keras' ImageDataGenerator.flow_from_directory with the same augmentation (the tutorial's);
(4) augmentation alone on an in-memory batch;
(5) decoded images cached in memory (config.data.cache) plus augmentation;
(6) the small CNN's train step (with augmentation) fed by the real pipeline versus fed one
    constant in-memory batch.
Prints a table and writes JSON.
"""

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from catsdogs_jax.data import augment
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import experiment
from catsdogs_jax.training.steps import make_train_step
from configs import small_cnn_aug  # noqa: E402

flags.DEFINE_string(
    'data',
    os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cats_and_dogs_small'),
    'split/label/image folder',
)
flags.DEFINE_integer('image_size', 150, 'resize target')
flags.DEFINE_integer('batch_size', 32, 'global batch size')
flags.DEFINE_integer('steps', 30, 'timed train steps per measurement')
flags.DEFINE_string('json', None, 'write the results here as JSON')
FLAGS = flags.FLAGS


def _config():
  config = small_cnn_aug.get_config()
  config.data.dataset = f'folder:{os.path.abspath(FLAGS.data)}'
  config.data.train_split, config.data.eval_split, config.data.test_split = (
      'train',
      'validation',
      'test',
  )
  config.data.image_size, config.batch_size = FLAGS.image_size, FLAGS.batch_size
  return config


def _rate(batches, fn=lambda b: b) -> float:
  """Images/s over an iterator of batches, `fn` applied to each (blocking on its result)."""
  start, images = time.perf_counter(), 0
  for batch in batches:
    jax.block_until_ready(fn(batch))
    images += len(batch['label'])
  return images / (time.perf_counter() - start)


def _decode_only_rate(folder: str, ratio: int) -> float:
  """Images/s of libjpeg alone on the folder's JPEGs at scale 1/ratio, in tf.data on every core."""
  import tensorflow as tf

  paths = tf.io.gfile.glob(os.path.join(folder, '*', '*.jpg'))
  # one pixel per image, so that differently sized images batch
  decode = lambda path: tf.io.decode_jpeg(tf.io.read_file(path), channels=3, ratio=ratio)[0, 0]
  ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  start = time.perf_counter()
  for _ in ds.batch(32).prefetch(tf.data.AUTOTUNE):
    pass
  return len(paths) / (time.perf_counter() - start)


def _keras_generator_rate(config) -> float:
  """Images/s of the tutorial's pipeline: ImageDataGenerator.flow_from_directory, same augmentation."""
  from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it there

  a = config.augment
  generator = ImageDataGenerator(
      rescale=1 / 255,
      rotation_range=a.rotation_range,
      width_shift_range=a.width_shift_range,
      height_shift_range=a.height_shift_range,
      shear_range=a.shear_range,
      zoom_range=a.zoom_range,
      horizontal_flip=a.horizontal_flip,
      fill_mode=a.fill_mode,
  )
  flow = generator.flow_from_directory(
      os.path.join(FLAGS.data, config.data.train_split),
      target_size=(config.data.image_size, config.data.image_size),
      batch_size=config.batch_size,
      class_mode='binary',
  )
  start = time.perf_counter()
  for _ in range(len(flow)):
    next(flow)
  return flow.samples / (time.perf_counter() - start)


def main(_):
  from catsdogs_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()  # as main.py does
  config = _config()
  t0 = time.perf_counter()
  exp = experiment.build(config, tempfile.mkdtemp())
  pipeline = exp.pipeline(config.data.train_split)
  scan_seconds = time.perf_counter() - t0
  augment_fn = jax.jit(lambda k, x: augment.augment_batch(k, x, config.augment))
  key = jax.random.PRNGKey(0)
  constant = next(pipeline.train_epoch(0))
  jax.block_until_ready(augment_fn(key, constant['image']))  # compile

  results = {
      'image_size': config.data.image_size,
      'batch_size': config.batch_size,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'setup_seconds': round(scan_seconds, 2),
  }
  # Decoding variants: the default (full-size decode, antialiased bilinear resize), JPEG drafts,
  # and drafts with the area (box) resize, which costs a fraction of TensorFlow's antialiased one.
  variants = {
      'decode_resize': {},
      'decode_resize_draft': {'jpeg_draft': True},
      'decode_resize_draft_area': {'jpeg_draft': True, 'resize_method': 'area'},
  }

  def pipeline_with(**data_overrides):
    varied = config.copy_and_resolve_references()
    varied.data.update(data_overrides)
    return experiment.build(varied, tempfile.mkdtemp()).pipeline(config.data.train_split)

  for name, overrides in variants.items():
    source = pipeline_with(**overrides)
    results[name] = _rate(source.train_epoch(1))
    results[f'{name}_augment'] = _rate(source.train_epoch(2), lambda b: augment_fn(key, b['image']))
  train_folder = os.path.join(FLAGS.data, config.data.train_split)
  results['decode_only'] = _decode_only_rate(train_folder, 1)
  results['decode_only_half_scale'] = _decode_only_rate(train_folder, 2)
  results['keras_image_data_generator'] = _keras_generator_rate(config)
  results['augment_only'] = _rate([constant] * 20, lambda b: augment_fn(key, b['image']))
  # With config.data.cache the decoded images stay in memory after the first epoch.
  cached = pipeline_with(cache=True)
  _rate(cached.train_epoch(0))  # fills the cache
  results['cached_augment'] = _rate(cached.train_epoch(1), lambda b: augment_fn(key, b['image']))

  step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, config), exp.mesh)
  state = exp.init_state()
  on_mesh = parallel.shard_batch(constant, exp.mesh)
  state, _, _ = step(state, on_mesh)  # compile
  jax.block_until_ready(state)

  def steps(batches):
    nonlocal state
    start, n = time.perf_counter(), 0
    for batch in batches:
      state, metrics, _ = step(state, batch)
      n += 1
      if n == FLAGS.steps:
        break
    jax.block_until_ready(state)
    return n * config.batch_size / (time.perf_counter() - start)

  results['train_step_constant_batch'] = steps(iter(lambda: on_mesh, None))
  results['train_step_real_data'] = steps(
      parallel.prefetch_to_mesh(pipeline.train_epoch(3), exp.mesh)
  )
  results['pipeline_headroom'] = results['decode_resize'] / results['train_step_constant_batch']

  print(
      f'\nimage folder {FLAGS.data} at {config.data.image_size} px, batch {config.batch_size}, '
      f'{results["devices"]} {results["platform"]} device(s); setup (checks, folder scan) '
      f'{results["setup_seconds"]} s'
  )
  for name in (
      *[f'{name}{suffix}' for name in variants for suffix in ('', '_augment')],
      'decode_only',
      'decode_only_half_scale',
      'keras_image_data_generator',
      'augment_only',
      'cached_augment',
      'train_step_constant_batch',
      'train_step_real_data',
  ):
    print(f'  {name:<28} {results[name]:10.1f} images/s')
  fastest = results['decode_resize_draft_area_augment']
  print(
      f'  decode+resize+augmentation with drafts and the area resize: '
      f'{fastest / results["keras_image_data_generator"]:.1f}x ImageDataGenerator'
  )
  print(
      f'  the pipeline alone delivers {results["pipeline_headroom"]:.1f}x what the train step '
      'consumes'
  )
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
