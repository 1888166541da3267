"""Test fixtures: 4 simulated CPU devices, tiny generated image folders, small configs."""

import os

# Must be set before jax is imported anywhere in the test session.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import importlib.util  # noqa: E402
import sys  # noqa: E402

# torchvision's models import torch._dynamo, which loads triton's native library; loaded after
# TensorFlow's (any test module may import it first) that segfaults the process. Loaded first,
# both work.
if importlib.util.find_spec('torchvision') is not None:
  import torchvision.models  # noqa: E402, F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from catsdogs_jax.defaults import set_fields
from configs import mnist_mlp, small_cnn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# benchmarks/inject_fault.py: the fault-injection runner the fault tests share with the benchmark.
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

SHARED_DATA = os.path.join(
    os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cats_and_dogs_small'
)


def write_keras_h5(model, path) -> str:
  """Writes a Keras model's weights in the legacy .h5 format that keras.applications publishes."""
  h5py = pytest.importorskip('h5py')
  from keras.src.legacy.saving import legacy_h5_format

  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return str(path)


def make_image_folder(
    root,
    counts=(('train', 24), ('validation', 10), ('test', 10)),
    classes=('cats', 'dogs'),
    size=(40, 48),
    seed=0,
):
  """A split/label/image folder of small JPEGs whose class is visible in the colour."""
  rng = np.random.default_rng(seed)
  colours = [(200, 60, 60), (60, 60, 200), (60, 200, 60)]
  for split, n in counts:
    for label, name in enumerate(classes):
      directory = os.path.join(root, split, name)
      os.makedirs(directory, exist_ok=True)
      for i in range(n // len(classes)):
        pixels = np.array(colours[label]) + rng.normal(0, 40, (*size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(directory, f'{name}.{i}.jpg')
        )
  return str(root)


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp('images'))


def override(config, **fields):
  """Sets config fields named by dotted paths: override(c, **{'optimizer.name': 'sgd'})."""
  return set_fields(config, fields)


def tiny_config(folder, **overrides):
  """The small CNN on a generated folder at 48 px: seconds per epoch."""
  config = small_cnn.get_config()
  config.data.dataset = f'folder:{folder}'
  config.data.train_split, config.data.eval_split, config.data.test_split = (
      'train',
      'validation',
      'test',
  )
  config.data.image_size = 48
  config.batch_size = 8
  config.num_epochs = 1
  config.log_every_steps = 2
  config.data.cache = True
  return override(config, **overrides)


@pytest.fixture
def make_config(image_folder):
  return lambda **overrides: tiny_config(image_folder, **overrides)


def tiny_mlp_fields(folder, size=16):
  """The fields that make configs/mnist_mlp.py tiny_mlp_config (also as --config.* flags)."""
  return {
      'data.dataset': f'folder:{folder}',
      'data.train_split': 'train',
      'data.eval_split': 'validation',
      'data.test_split': 'test',
      'data.image_size': size,
      'data.channels': 3,
      'data.num_classes': 2,
      'batch_size': 8,
      'loss': 'softmax',
      'data.preprocess': 'rescale',
      'optimizer.weight_decay': 0.0,
      'num_epochs': 1,
      'log_every_steps': 2,
      'data.cache': True,
  }


def tiny_mlp_config(folder, size=16, **overrides):
  """The MNIST MLP on RGB images of `size` px: compiles and trains in about a second."""
  return override(mnist_mlp.get_config(), **{**tiny_mlp_fields(folder, size), **overrides})
