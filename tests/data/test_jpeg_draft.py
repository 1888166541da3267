"""config.data.jpeg_draft: JPEGs decoded at a reduced libjpeg scale, as Pillow's draft mode does."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from catsdogs_jax.data import input_pipeline

from conftest import make_image_folder, tiny_config


def _photo(height, width, seed=0):
  """A smooth JPEG (gradients and blobs, as photos are) of the given size."""
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  rng = np.random.default_rng(seed)
  channels = [
      127 + 120 * np.sin(2 * np.pi * (f1 * x + f2 * y) + p)
      for f1, f2, p in rng.uniform(0.5, 3, (3, 3))
  ]
  pixels = np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


@pytest.mark.parametrize(
    'height, width, size, ratio',
    [
        (375, 500, 150, 2),  # a Kaggle photo at the tutorial's size: half scale
        (375, 500, 64, 4),  # a quarter
        (1200, 900, 100, 8),  # an eighth
        (375, 500, 188, 2),  # 375 / 2 rounds up to 188: still half (Pillow's draft stays full)
        (375, 500, 189, 1),  # one more: full size
        (120, 90, 150, 1),  # smaller than the target: full size
    ],
)
def test_the_largest_scale_that_keeps_the_size_decoded_as_pillow_s_draft(
    height, width, size, ratio
):
  data = _photo(height, width)
  ours = input_pipeline.decode_jpeg_draft(tf.constant(data), 3, size).numpy()
  # Pillow's draft mode at the same scale (it picks floor(side / requested) as the most).
  image = Image.open(io.BytesIO(data))
  image.draft('RGB', (width // ratio, height // ratio))
  assert image.size == (-(-width // ratio), -(-height // ratio))
  reference = np.asarray(image.convert('RGB'))
  assert ours.shape == reference.shape
  # Both are libjpeg's scaled IDCT; TensorFlow's and Pillow's builds round a little differently
  # (as much at full size: 1.0 on average).
  assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 1.5


@pytest.mark.parametrize('resize_method', ['bilinear', 'area'])
def test_the_pipeline_with_drafts_gives_nearly_the_full_decode_s_images(tmp_path, resize_method):
  folder = make_image_folder(tmp_path / 'photos', size=(200, 260))
  images = {}
  for draft, method in ((False, 'bilinear'), (True, resize_method)):
    overrides = {'data.jpeg_draft': draft, 'data.resize_method': method}
    pipe = input_pipeline.ImagePipeline(
        tiny_config(folder, batch_size=10, **overrides), 'validation', ('cats', 'dogs')
    )
    images[draft] = np.concatenate([b['image'] for b in pipe.eval_batches()]).astype(float)
  assert images[True].shape == images[False].shape == (10, 48, 48, 3)
  difference = np.abs(images[True] - images[False])
  # decoded at a quarter of the size (200 -> 50 >= 48); the area resize (the fastest
  # combination) averages boxes where the default weighs a triangle
  assert 0 < difference.mean() < 3
