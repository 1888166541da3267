"""oneDNN's convolutions (models/onednn.py) compute what `lax.conv_general_dilated` computes.

Forward and both gradients, for every kind of convolution the models use, on one device
and inside the data-parallel step over the 4 simulated devices (conftest).
"""

import platform
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from catsdogs_jax import models
from catsdogs_jax.models import layers, onednn
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import optimizers
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.training.train_state import make_init_fn
from configs import default

DN = ('NHWC', 'HWIO', 'NHWC')
WHEELS = platform.system() == 'Linux' and platform.machine() == 'x86_64'
needs_onednn = pytest.mark.skipif(
    not onednn.load().loaded, reason=f'oneDNN convolutions off: {onednn.load().detail}'
)


def test_the_library_loads_where_the_onednn_wheels_install():
  if not WHEELS:
    pytest.skip('the onednn wheels are Linux x86-64 only')
  extension = onednn.load()
  assert extension.loaded, extension.detail
  assert re.fullmatch(r'oneDNN 3\.\d+\.\d+', extension.detail)


def test_why_it_is_off_is_one_sentence_that_names_the_fix(monkeypatch, tmp_path):
  built = onednn.library_path()
  monkeypatch.setenv('CATSDOGS_ONEDNN', '0')
  assert onednn._load() == onednn.Extension(False, 'turned off by CATSDOGS_ONEDNN=0')
  monkeypatch.delenv('CATSDOGS_ONEDNN')
  monkeypatch.setattr(onednn, 'library_path', lambda: tmp_path / '_onednn_conv.so')
  extension = onednn._load()
  assert not extension.loaded
  assert extension.detail.startswith('_onednn_conv.so is not built (it builds on Linux x86-64')
  assert extension.detail.endswith('reinstall with `pip install -e .`')
  (tmp_path / '_onednn_conv.so').write_bytes(b'not a library')
  if WHEELS:  # the runtime is found; the file is not a library
    extension = onednn._load()
    assert not extension.loaded and 'does not load' in extension.detail
    assert extension.detail.endswith('reinstall with `pip install -e .`')
  if onednn.load().loaded:  # a library built before one of the calls was added
    monkeypatch.setattr(onednn, 'library_path', lambda: built)
    monkeypatch.setitem(onednn._TARGETS, 'newer', 'OnednnConvNewer')
    assert onednn._load() == onednn.Extension(
        False, f'{built.name} is from an older version: reinstall with `pip install -e .`'
    )


def _values_and_grads(fn, x, w):
  y, vjp = jax.vjp(fn, x, w)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
  return (y, *vjp(dy))


def _lax(strides, padding, groups):
  return lambda x, w: lax.conv_general_dilated(
      x,
      w,
      strides,
      padding,
      dimension_numbers=DN,
      feature_group_count=groups,
      precision=lax.Precision.HIGHEST,
  )


def _onednn(strides, padding, groups):
  return lambda x, w: layers.onednn_conv_general_dilated(
      x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups
  )


# (input H, W, C; kernel; output channels; strides; padding; groups), from the models.
CONVOLUTIONS = {
    'small_cnn first, odd size': ((15, 15, 3), 3, 32, (1, 1), 'VALID', 1),
    'small_cnn deep, even size': ((8, 8, 128), 3, 128, (1, 1), 'VALID', 1),
    'vgg16 first': ((10, 9, 3), 3, 64, (1, 1), 'SAME', 1),
    'vgg16 deep, 512 channels': ((4, 4, 512), 3, 512, (1, 1), 'SAME', 1),
    'mnist 5x5': ((12, 12, 1), 5, 8, (1, 1), 'VALID', 1),
    'alexnet 11x11 stride 4': ((35, 35, 3), 11, 16, (4, 4), 'VALID', 1),
    'alexnet 5x5 same': ((9, 9, 16), 5, 24, (1, 1), 'SAME', 1),
    'resnet stem 7x7 stride 2': ((16, 16, 3), 7, 16, (2, 2), ((3, 3), (3, 3)), 1),
    'resnet 3x3 stride 2': ((9, 9, 16), 3, 32, (2, 2), ((1, 1), (1, 1)), 1),
    'resnet 1x1 stride 2 shortcut': ((8, 8, 16), 1, 32, (2, 2), 'VALID', 1),
    'efficientnet stem, uneven same': ((16, 16, 3), 3, 32, (2, 2), 'SAME', 1),
    'efficientnet 1x1 expand': ((7, 7, 24), 1, 144, (1, 1), 'SAME', 1),
    'depthwise 3x3': ((9, 8, 32), 3, 32, (1, 1), 'SAME', 32),
    'depthwise 5x5 stride 2': ((11, 11, 40), 5, 40, (2, 2), 'SAME', 40),
    'grouped': ((7, 7, 8), 3, 12, (1, 1), 'SAME', 2),
    'stride leaves rows unread': ((8, 9, 4), 3, 8, (2, 2), 'VALID', 1),
    'explicit, asymmetric padding, mixed strides': ((10, 7, 4), 3, 6, (2, 1), ((1, 0), (2, 1)), 1),
    'even kernel': ((8, 8, 4), 2, 8, (2, 2), 'VALID', 1),
}


@needs_onednn
@pytest.mark.parametrize('case', CONVOLUTIONS, ids=list(CONVOLUTIONS))
def test_onednn_convolution_equals_lax_forward_and_both_gradients(case):
  (h, w, c), k, o, strides, padding, groups = CONVOLUTIONS[case]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, c // groups, o)), jnp.float32)
  fast_fn = _onednn(strides, padding, groups)
  # oneDNN's calls are taken, not the fallback.
  assert 'custom_partitioning' in str(jax.make_jaxpr(fast_fn)(x, kernel))
  fast = jax.jit(lambda x, w: _values_and_grads(fast_fn, x, w))(x, kernel)
  plain = _values_and_grads(_lax(strides, padding, groups), x, kernel)
  for a, b in zip(fast, plain):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max())
    )


@needs_onednn
def test_bfloat16_convolution_computes_in_bfloat16_to_its_precision():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 32)), jnp.float32) / 12
  half = jax.jit(lambda x, w: _values_and_grads(_onednn((2, 2), 'SAME', 1), x, w))(
      x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  )
  plain = _values_and_grads(_lax((2, 2), 'SAME', 1), x, kernel)
  for a, b in zip(half, plain):
    assert a.dtype == jnp.bfloat16
    scale = float(jnp.abs(b).max())
    # bfloat16 keeps 8 bits: differences of a percent of the largest value, not more.
    assert float(jnp.abs(a.astype(jnp.float32) - b).max()) < 2e-2 * scale


def test_what_onednn_does_not_take_goes_to_the_cpu_forms():
  x = jnp.ones((2, 8, 8, 4), jnp.float32)
  w = jnp.ones((3, 3, 4, 4), jnp.float32)
  dilated = jax.make_jaxpr(
      lambda x, w: layers.onednn_conv_general_dilated(
          x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN
      )
  )(x, w)
  transposed = jax.make_jaxpr(
      lambda x, w: layers.onednn_conv_general_dilated(
          x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=DN
      )
  )(x, w)
  for jaxpr in (dilated, transposed):
    assert 'custom_partitioning' not in str(jaxpr) and 'conv_general_dilated' in str(jaxpr)


# (input H, W, C; kernel; output channels; strides; explicit padding; groups)
BIASED = {
    'small_cnn first': ((15, 15, 3), 3, 32, (1, 1), ((0, 0), (0, 0)), 1),
    'vgg16 deep, 512 channels': ((4, 4, 512), 3, 512, (1, 1), ((1, 1), (1, 1)), 1),
    'efficientnet squeeze-excite 1x1': ((1, 1, 96), 1, 4, (1, 1), ((0, 0), (0, 0)), 1),
    'depthwise, stride 2, uneven padding': ((9, 8, 32), 3, 32, (2, 2), ((1, 1), (0, 1)), 32),
    'grouped': ((7, 7, 8), 3, 12, (1, 1), ((1, 1), (1, 1)), 2),
}


def _biased_values_and_grads(fn, x, kernel, bias):
  y, vjp = jax.vjp(fn, x, kernel, bias)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
  return (y, *vjp(dy))


def _biased_case(case, batch=2):
  (h, w, c), k, o, strides, padding, groups = BIASED[case]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, w, c)), jnp.float32)
  kernel = (
      jnp.asarray(rng.normal(size=(k, k, c // groups, o)), jnp.float32)
      / (k * k * c // groups) ** 0.5
  )
  bias = jnp.asarray(rng.normal(size=(o,)), jnp.float32)
  fast = lambda x, w, b: onednn.conv2d_bias(x, w, b, strides, padding, groups)
  plain = lambda x, w, b: _lax(strides, padding, groups)(x, w) + b
  return (x, kernel, bias), fast, plain


@needs_onednn
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('case', BIASED, ids=list(BIASED))
def test_convolution_with_bias_equals_lax_plus_bias_and_its_three_gradients(case, dtype):
  """float32 to float32 precision; bfloat16, whose bias gradient is oneDNN's, to a percent."""
  args, fast_fn, plain_fn = _biased_case(case)
  half = dtype == 'bfloat16'
  fast_args = [a.astype(dtype) for a in args]
  hlo = jax.jit(jax.grad(lambda *a: jnp.sum(fast_fn(*a)), (0, 1, 2))).lower(*fast_args).as_text()
  assert ('catsdogs_onednn_conv_kernel_bias_grad' in hlo) == half
  fast = jax.jit(lambda *a: _biased_values_and_grads(fast_fn, *a))(*fast_args)
  plain = _biased_values_and_grads(plain_fn, *args)
  for a, b in zip(fast, plain):
    assert a.shape == b.shape and a.dtype == dtype
    scale = float(jnp.abs(b).max())
    if half:  # bfloat16 keeps 8 bits: differences of a percent of the largest value
      assert float(jnp.abs(a.astype(jnp.float32) - b).max()) < 2e-2 * scale
    else:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)


@needs_onednn
def test_the_bias_gradient_of_a_sharded_batch_is_summed_over_the_devices():
  assert jax.device_count() == 4, 'conftest sets 4 simulated CPU devices'
  args, fast_fn, _ = _biased_case('grouped', batch=8)
  args = [a.astype(jnp.bfloat16) for a in args]
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(fast_fn(*a).astype(jnp.float32) ** 2), (0, 1, 2)))
  one = grads(*args)
  mesh = parallel.create_mesh(jax.devices())
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  sharded = [jax.device_put(args[0], batch), *args[1:]]
  hlo = grads.lower(*sharded).compile().as_text()
  # Each device sums its own 2 images' gradients (the operands are [2, ...] shards), then
  # one all-reduce adds the kernel and bias gradients.
  assert re.search(
      r'target="catsdogs_onednn_conv_kernel_bias_grad", operand_layout_constraints=\{bf16\[2,7,7,8\]',
      hlo,
  )
  assert 'all-reduce' in hlo
  assert 'all-gather' not in hlo
  four = grads(*sharded)
  for a, b in zip(four, one):
    np.testing.assert_allclose(
        np.asarray(a, np.float32),
        np.asarray(b, np.float32),
        rtol=2e-2,
        atol=2e-2 * float(jnp.abs(b.astype(jnp.float32)).max()),
    )


@needs_onednn
@pytest.mark.parametrize(
    'options',
    [
        dict(padding='SAME'),
        dict(padding='VALID', strides=2, dtype=jnp.bfloat16),
        dict(padding=1, feature_group_count=4),
        dict(use_bias=False),
        dict(kernel_dilation=2),
        dict(padding='CIRCULAR'),
    ],
    ids=['same', 'strided bfloat16', 'grouped int padding', 'no bias', 'dilated', 'circular'],
)
def test_the_onednn_conv_module_is_nn_conv_with_its_parameters_names_and_gradients(options):
  """Same parameters (names, shapes, initial values) as nn.Conv, the same output and gradients.

  Convolutions with a bias take the fused kernel-and-bias gradient call; the rest run as
  nn.Conv with oneDNN's convolution or, for what oneDNN does not take, lax's.
  """
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 12, 8)), jnp.float32)

  class Model(nn.Module):
    conv: type

    @nn.compact
    def __call__(self, x):
      return self.conv(8, (3, 3), **options)(x)  # unnamed: Conv_0

  fast, plain = Model(layers.ONEDNN.conv), Model(nn.Conv)
  params = fast.init(jax.random.PRNGKey(0), x)
  plain_params = plain.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, plain_params)
  assert list(params['params']) == ['Conv_0']
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)):
    np.testing.assert_array_equal(a, b)

  def values_and_grads(model):
    loss = lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = values_and_grads(fast)
  plain_loss, plain_grads = values_and_grads(plain)
  tolerance = 2e-2 if options.get('dtype') == jnp.bfloat16 else 1e-4
  np.testing.assert_allclose(loss, plain_loss, rtol=tolerance)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * float(jnp.abs(b).max()))
  # conv2d_bias, whose bias gradient is oneDNN's in bfloat16, takes what has a bias and fits.
  jaxpr = str(jax.make_jaxpr(fast.apply)(params, x))
  fused = (
      not {'use_bias', 'kernel_dilation'} & set(options) and options.get('padding') != 'CIRCULAR'
  )
  assert ('conv2d_bias' in jaxpr) == fused


def _step(forms, devices, batch):
  config = default.get_config()
  config.model.layers, config.optimizer.name = forms, 'sgd'
  config.optimizer.learning_rate, config.data.image_size = 1e-2, 48
  mesh = parallel.create_mesh(devices)
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=10)
  init = make_init_fn(model, tx, optimizers.create_plateau(config), (48, 48, 3))
  state = parallel.jit_init(init, mesh)(jax.random.PRNGKey(0))
  step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)
  sharded = parallel.shard_batch(batch, mesh)
  compiled = step.lower(state, sharded).compile().as_text()
  state, metrics, finite = step(state, sharded)
  assert bool(finite)
  return jax.device_get(state.params), float(metrics.compute()['loss']), compiled


@needs_onednn
def test_the_data_parallel_step_convolves_each_shard_and_equals_the_cpu_forms():
  assert jax.device_count() == 4, 'conftest sets 4 simulated CPU devices'
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.integers(0, 256, (8, 48, 48, 3), dtype=np.uint8),
      'label': rng.integers(0, 2, (8,), dtype=np.int32),
  }
  cpu, cpu_loss, _ = _step('cpu', jax.devices()[:1], batch)
  one, one_loss, one_hlo = _step('onednn', jax.devices()[:1], batch)
  four, four_loss, four_hlo = _step('onednn', jax.devices(), batch)
  # Each device convolves its own 2 images: oneDNN's calls on [2, ...] shards, and no
  # activation is gathered; the only all-reduces are of gradients (parameter-sized).
  calls = re.findall(r'custom_call_target="catsdogs_onednn_conv_(\w+)"', four_hlo)
  assert sorted(set(calls)) == ['forward', 'input_grad', 'kernel_grad']
  assert 'custom_call_target="catsdogs_onednn_conv_forward"' in one_hlo
  shards = re.findall(
      r'= f32\[(\d+),\d+,\d+,\d+\]\{[^}]*\} custom-call\([^)]*\), '
      r'custom_call_target="catsdogs_onednn_conv_(?:forward|input_grad)"',
      four_hlo,
  )
  assert len(shards) == 8 - 1 and set(shards) == {'2'}  # 4 convolutions, 3 input gradients
  assert 'all-gather' not in four_hlo
  # One train step, the extension on and off, on 1 and on 4 devices: the same step.
  np.testing.assert_allclose(one_loss, cpu_loss, rtol=1e-5)
  np.testing.assert_allclose(four_loss, one_loss, rtol=1e-5)
  for tree in (one, four):
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(cpu)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
