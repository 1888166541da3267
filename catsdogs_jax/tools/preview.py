"""A picture of one training image and random augmentations of it, to check the settings by eye."""

import os

import jax
import numpy as np
from absl import logging

from catsdogs_jax.data import augment
from catsdogs_jax.tools import plots
from catsdogs_jax.tools.summary import describe_augmentation

PREVIEW_FILE = 'augment_preview.png'


def augmented_copies(image: np.ndarray, cfg, num: int = 8, seed: int = 0) -> np.ndarray:
  """`num` augmentations of a uint8 [H, W, C] image, as the train step draws them: uint8 [num, H, W, C]."""
  batch = np.repeat(image[None], num, axis=0)
  augmented = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))(
      jax.random.PRNGKey(seed), batch
  )
  return np.clip(np.asarray(augmented), 0, 255).round().astype(np.uint8)


def write_preview(config, workdir: str, num: int = 8) -> str:
  """Writes `workdir/augment_preview.png` from the first image of the training split."""
  from catsdogs_jax.data import input_pipeline

  info = input_pipeline.describe(config)
  pipeline = input_pipeline.ImagePipeline(config, config.data.train_split, info.class_names)
  image = next(pipeline.eval_batches())['image'][0]
  if not augment.is_enabled(config.augment):
    logging.warning('config.augment has every random transform off: the preview shows copies.')
  os.makedirs(workdir, exist_ok=True)
  size = config.data.image_size
  path = plots.augmentation_preview(
      image,
      list(augmented_copies(image, config.augment, num=num, seed=config.seed)),
      os.path.join(workdir, PREVIEW_FILE),
      f'Augmentation at {size}x{size} px: {describe_augmentation(config.augment)}',
  )
  logging.info('wrote %s (the original, then %d augmentations)', path, num)
  return path
