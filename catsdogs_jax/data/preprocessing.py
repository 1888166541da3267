"""On-device input preprocessing, bound to the weights a model was trained with.

The input pipeline ships uint8 images; the jitted steps convert them here, so
the host transfers a quarter of the bytes and the conversion runs on the
accelerator.
"""

import jax.numpy as jnp

from catsdogs_jax.registry import lookup

# Keras applications' "caffe" mode (VGG16/VGG19 weights): BGR, mean-subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision ImageNet weights: RGB in [0, 1], normalised per channel.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def rescale(images):
  """1/255, for models trained from scratch (the tutorials' `rescale=1./255`)."""
  return images.astype(jnp.float32) / 255.0


def caffe(images):
  x = images.astype(jnp.float32)[..., ::-1]
  return x - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)


def torch(images):
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(TORCH_MEAN, jnp.float32)) / jnp.asarray(TORCH_STD, jnp.float32)


def inception(images):
  """TensorFlow's EfficientNet-Lite input: (x - 127) / 128 on RGB (MEAN_RGB 127, STDDEV_RGB 128).

  Keras' 'tf' mode, x / 127.5 - 1, differs from it by under 0.4%; the Lite
  weights were trained with exactly this.
  """
  return (images.astype(jnp.float32) - 127.0) / 128.0


def identity(images):
  return images.astype(jnp.float32)


# 'auto' is resolved by `experiment.build` to the preprocessing of the init_from
# weights; without init_from (or outside build) it means 1/255.
PREPROCESSORS = {
    'auto': rescale,
    'rescale': rescale,
    'caffe': caffe,
    'torch': torch,
    'inception': inception,
    'none': identity,
}


def resolve(name: str, weights_metadata) -> str:
  """'auto' becomes the weights' own preprocessing (or 'rescale'); others stay."""
  if name != 'auto':
    return name
  return (weights_metadata or {}).get('preprocess', 'rescale')


def get_preprocessor(name: str):
  return lookup(PREPROCESSORS, name, 'data.preprocess')
