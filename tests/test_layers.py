"""The CPU layer forms compute what the plain forms compute, forward and backward."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax
from jax.ad_checkpoint import print_saved_residuals

from catsdogs_jax import models
from catsdogs_jax.models import abstract_variables, layers, onednn
from configs import default

DN = ('NHWC', 'HWIO', 'NHWC')


def _values_and_grads(fn, *args):
  y, vjp = jax.vjp(fn, *args)
  dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
  return (y, *vjp(dy))


def _assert_close(fast, plain):
  for a, b in zip(fast, plain):
    assert a.shape == b.shape
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max())
    )


@pytest.mark.parametrize(
    'size, kernel, padding',
    [
        ((9, 8), 3, ((0, 0), (0, 0))),  # odd and even sizes, the small CNN's valid convs
        ((8, 9), 3, ((1, 1), (1, 1))),  # VGG's same-padded convs
        ((7, 7), 5, ((0, 0), (0, 0))),  # MNIST's 5x5
        ((10, 7), 3, ((1, 0), (2, 1))),  # explicit, asymmetric padding
        ((6, 6), 5, ((2, 2), (2, 2))),
    ],
)
@pytest.mark.parametrize('block_bytes', [1 << 20, 1, 700])  # one block; a row each; uneven
def test_fast_convolution_equals_lax_forward_and_backward(
    size, kernel, padding, block_bytes, monkeypatch
):
  monkeypatch.setattr(layers, '_BLOCK_BYTES', block_bytes)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *size, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 5)), jnp.float32)
  plain = _values_and_grads(
      lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DN), x, w
  )
  fast = _values_and_grads(lambda x, w: layers.conv2d(x, w, padding), x, w)
  _assert_close(fast, plain)


@pytest.mark.parametrize(
    'size, kernel, strides, padding',
    [
        ((9, 8), 3, (1, 1), 'SAME'),  # EfficientNet's stride-1 blocks
        ((9, 8), 3, (2, 2), 'SAME'),  # its strided ones: TensorFlow's uneven SAME padding
        ((8, 8), 5, (2, 2), 'SAME'),
        ((7, 10), 5, (1, 1), 'VALID'),
        ((10, 7), 3, (2, 1), ((1, 0), (2, 1))),  # explicit, asymmetric padding, mixed strides
    ],
)
def test_fast_depthwise_convolution_equals_lax_forward_and_backward(size, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  plain = _values_and_grads(
      lambda x, w: lax.conv_general_dilated(
          x, w, strides, padding, dimension_numbers=DN, feature_group_count=6
      ),
      x,
      w,
  )
  fast = _values_and_grads(
      lambda x, w: layers.conv_general_dilated(
          x, w, strides, padding, dimension_numbers=DN, feature_group_count=6
      ),
      x,
      w,
  )
  _assert_close(fast, plain)
  # The fast form is taken: no grouped convolution is left in the program.
  hlo = (
      jax.jit(
          lambda x, w: layers.conv_general_dilated(
              x, w, strides, padding, dimension_numbers=DN, feature_group_count=6
          )
      )
      .lower(x, w)
      .as_text()
  )
  assert 'convolution' not in hlo


@pytest.mark.parametrize('size', [(8, 8), (9, 7), (15, 15)])
def test_fast_max_pool_equals_reduce_window_including_ties(size):
  rng = np.random.default_rng(0)
  # ReLU outputs have many tied zeros: the gradient must go to the first maximum only.
  x = jax.nn.relu(jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32))
  x = x.at[:, 0, 0].set(x[:, 0, 1])  # a tie between positive values too
  plain = _values_and_grads(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
  fast = _values_and_grads(lambda x: layers.max_pool(x, (2, 2), (2, 2)), x)
  _assert_close(fast, plain)
  np.testing.assert_array_equal(np.asarray(fast[1]) != 0, np.asarray(plain[1]) != 0)


@pytest.mark.parametrize('size, window', [((8, 8), 2), ((9, 7), 2), ((15, 15), 2), ((10, 11), 3)])
def test_relu_then_fast_max_pool_equals_relu_then_reduce_window(size, window):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  x = x.at[0, 0, :2].set(0.7)  # a tie between positive values
  x = x.at[1, :window, :window, 1].set(-0.5)  # a window with nothing positive: no gradient
  x = x.at[1, :window, :window, 2].set(0.0)  # ... and one of zeros (ReLU's gradient at 0 is 0)
  pool = lambda x: nn.max_pool(nn.relu(x), (window, window), strides=(window, window))
  plain = _values_and_grads(pool, x)
  relu_pool = lambda x: layers.max_pool(nn.relu(x), (window, window), (window, window))
  assert 'custom_vjp' in str(jax.make_jaxpr(relu_pool)(x))
  fast = _values_and_grads(relu_pool, x)
  _assert_close(fast, plain)
  np.testing.assert_array_equal(np.asarray(fast[1]) != 0, np.asarray(plain[1]) != 0)


def _primitives(fn, *args):
  """The primitives of fn's program and of its gradient's (the sum of its output)."""
  grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))
  return str(jax.make_jaxpr(fn)(*args)) + str(jax.make_jaxpr(grad)(*args))


@pytest.mark.parametrize('size', [(8, 8), (9, 7)])  # even and odd: SAME's strided rows differ
@pytest.mark.parametrize('strides', [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize('padding', ['VALID', 'SAME', ((0, 0), (0, 0))])
def test_1x1_convolution_is_a_matmul_equal_to_lax(size, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *size, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(1, 1, 4, 5)), jnp.float32)
  conv = lambda lib: lambda x, w: lib.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=DN
  )
  _assert_close(_values_and_grads(conv(layers), x, w), _values_and_grads(conv(lax), x, w))
  program = _primitives(conv(layers), x, w)
  assert 'dot_general' in program and 'conv_general_dilated' not in program


@pytest.mark.parametrize('use_bias', [False, True])
@pytest.mark.parametrize('strides, padding', [(1, 'VALID'), (2, 'SAME'), (2, 'VALID')])
def test_1x1_conv_module_equals_nn_conv_with_and_without_bias(use_bias, strides, padding):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 6)), jnp.float32)
  make = lambda cls: cls(7, (1, 1), strides=strides, padding=padding, use_bias=use_bias)
  params = make(nn.Conv).init(jax.random.PRNGKey(0), x)['params']
  params = jax.tree.map(lambda p: p + 0.5, params)  # a bias that is not zero
  apply = lambda cls: lambda p, x: make(cls).apply({'params': p}, x)
  fast, plain = apply(layers.CPU.conv), apply(nn.Conv)
  for a, b in zip(
      jax.tree.leaves(_values_and_grads(fast, params, x)),
      jax.tree.leaves(_values_and_grads(plain, params, x)),
  ):
    _assert_close([a], [b])
  assert 'conv_general_dilated' not in _primitives(fast, params, x)


@pytest.mark.parametrize('size', [(8, 8), (9, 7), (11, 10)])
@pytest.mark.parametrize(
    'window, strides, padding',
    [
        ((3, 3), (2, 2), 'SAME'),  # the small Xception's pools
        ((3, 3), (2, 2), 'VALID'),
        ((2, 2), (1, 1), 'SAME'),
        ((2, 2), (1, 1), 'VALID'),
        ((3, 2), (1, 2), ((1, 1), (0, 1))),  # explicit padding, mixed overlap
        ((2, 2), (2, 2), 'SAME'),  # padded, without overlap
    ],
)
def test_overlapping_max_pool_equals_select_and_scatter_exactly_including_ties(
    size, window, strides, padding
):
  rng = np.random.default_rng(0)
  # Small integers: most windows hold ties, and overlapping gradients add up exactly.
  x = jnp.asarray(rng.integers(-1, 3, size=(2, *size, 3)), jnp.float32)
  x = x.at[1].set(jax.nn.relu(x[1]))  # ReLU's tied zeros
  x = x.at[0, :4, :4, 0].set(1.0)  # windows of one value
  pool = lambda lib: lambda x: lib.max_pool(x, window, strides=strides, padding=padding)
  y, vjp = jax.vjp(pool(layers), x)
  y_plain, vjp_plain = jax.vjp(pool(nn), x)
  dy = jnp.asarray(rng.integers(-4, 5, size=y_plain.shape), jnp.float32)
  np.testing.assert_array_equal(y, y_plain)
  np.testing.assert_array_equal(vjp(dy)[0], vjp_plain(dy)[0])
  program = _primitives(pool(layers), x)
  assert 'custom_vjp' in str(jax.make_jaxpr(pool(layers))(x))
  assert 'reduce_window' not in program and 'select_and_scatter' not in program


def test_overlapping_max_pool_keeps_a_byte_per_output_not_its_input():
  x = jnp.ones((2, 9, 9, 3))
  pool = lambda x: layers.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  assert _saved(pool, x) == ['i8[2,5,5,3]']


def _saved(fn, x):
  with contextlib.redirect_stdout(io.StringIO()) as saved:
    print_saved_residuals(fn, x)
  return sorted(line.split()[0] for line in saved.getvalue().splitlines())


def test_fast_max_pool_keeps_a_byte_per_output_not_its_input():
  x = jnp.ones((2, 8, 8, 3))
  assert _saved(lambda x: layers.max_pool(x, (2, 2)), x) == ['i8[2,4,4,3]']
  # After a ReLU: what the ReLU keeps, and the pool's byte per output.
  assert _saved(lambda x: layers.max_pool(nn.relu(x), (2, 2)), x) == sorted(
      _saved(nn.relu, x) + ['i8[2,4,4,3]']
  )


@pytest.mark.parametrize('size, kernel', [((8, 9), 3), ((7, 6), 2), ((5, 5), 5)])
def test_same_padding_takes_the_fast_form_with_lax_padding(size, kernel):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)
  conv = lambda x, w: layers.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)
  plain = _values_and_grads(
      lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN), x, w
  )
  _assert_close(_values_and_grads(conv, x, w), plain)


def test_layers_the_fast_forms_do_not_cover_fall_back_to_lax():
  x = jnp.ones((1, 9, 9, 4))
  w = jnp.ones((3, 3, 4, 4))
  conv = lambda *args, **kwargs: str(
      jax.make_jaxpr(
          lambda x: layers.conv_general_dilated(x, *args, dimension_numbers=DN, **kwargs)
      )(x)
  )
  strided = conv(w, (2, 2), 'SAME')
  grouped = conv(w[:, :, :1], (1, 1), 'VALID', feature_group_count=4)
  padded_1x1 = conv(w[:1, :1], (1, 1), ((1, 0), (0, 0)))  # reads zeros a matmul does not
  same, full = conv(w, (1, 1), 'SAME'), conv(w, (1, 1), 'VALID')
  pool = lambda x, *args: str(jax.make_jaxpr(lambda x: layers.max_pool(x, *args))(x))
  integer = pool(x.astype(jnp.int32), (3, 3), (2, 2))
  padding_only = pool(x, (2, 2), (2, 2), ((2, 0), (0, 0)))  # a window of padding alone
  assert not any('custom_vjp' in j for j in (strided, grouped, integer, padding_only))
  assert 'conv_general_dilated' in padded_1x1
  assert 'custom_vjp' in full and 'custom_vjp' in same
  assert 'custom_vjp' in pool(x, (3, 3), (2, 2)) and 'custom_vjp' in pool(x, (2, 2), (2, 2), 'SAME')
  np.testing.assert_array_equal(
      layers.max_pool(x.astype(jnp.int32), (3, 3), (2, 2)),
      nn.max_pool(x.astype(jnp.int32), (3, 3), (2, 2)),
  )


def test_layer_forms_by_name_and_auto_by_backend(monkeypatch):
  assert layers.layer_forms('plain') is layers.PLAIN and layers.layer_forms('cpu') is layers.CPU
  assert layers.PLAIN.conv is nn.Conv and layers.PLAIN.max_pool is nn.max_pool
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  # On the CPU: oneDNN's forms where the library loads (tests/test_onednn.py), else the CPU forms.
  auto = layers.ONEDNN if onednn.load().loaded else layers.CPU
  assert layers.layer_forms('auto') is layers.layer_forms() is auto
  monkeypatch.setattr(onednn, 'load', lambda: onednn.Extension(False, 'not built here'))
  assert layers.layer_forms('auto') is layers.CPU
  with pytest.raises(
      ValueError, match=r"^model.layers='onednn': not built here; or use model.layers='cpu'$"
  ):
    layers.layer_forms('onednn')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.layer_forms('auto') is layers.PLAIN
  with pytest.raises(
      ValueError, match="runs on the CPU backend only, not gpu: use model.layers='auto'"
  ):
    layers.layer_forms('onednn')
  with pytest.raises(
      ValueError,
      match="Unknown config.model.layers 'cudnn'; choose one of: auto, cpu, onednn, plain.",
  ):
    layers.layer_forms('cudnn')


def _config(name, forms, **model_fields):
  config = default.get_config()
  with config.unlocked():  # config.model.layers may not be a field yet
    config.model.name, config.model.layers = name, forms
  for k, v in model_fields.items():
    config.model[k] = v
  return config


# Gradients of the deep VGG are left to the per-layer tests: one of its pre-activations rounds
# to the other side of zero here (1e-8), so its ReLU passes a different gradient.
@pytest.mark.parametrize(
    'name, size, fields, compare_grads',
    [
        ('small_cnn', 48, {}, True),
        (
            'vgg16',
            32,
            {'include_top': False},
            False,
        ),  # the feature map: every layer the forms change
    ],
)
def test_create_model_builds_either_forms_with_the_same_results(name, size, fields, compare_grads):
  built = {forms: models.create_model(_config(name, forms, **fields)) for forms in ('cpu', 'plain')}
  assert built['cpu'].layers is layers.CPU and built['plain'].layers is layers.PLAIN
  x = jnp.asarray(np.random.default_rng(0).random((2, size, size, 3)), jnp.float32)
  params = built['plain'].init(jax.random.PRNGKey(0), x)['params']
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, abstract_variables(built['cpu'], (size, size, 3))['params']
  )
  jaxprs = {
      f: str(jax.make_jaxpr(lambda p, m=m: m.apply({'params': p}, x))(params))
      for f, m in built.items()
  }
  assert 'custom_vjp' in jaxprs['cpu'] and 'custom_vjp' not in jaxprs['plain']
  results = {}
  for forms, model in built.items():
    apply = lambda p, m=model: m.apply({'params': p}, x)
    results[forms] = [jax.jit(apply)(params)]
    if compare_grads:
      results[forms].append(jax.jit(jax.grad(lambda p: jnp.sum(apply(p) ** 2)))(params))
  for a, b in zip(jax.tree.leaves(results['cpu']), jax.tree.leaves(results['plain'])):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max())
    )
  with pytest.raises(ValueError, match="Unknown config.model.layers 'fast'; choose one of"):
    models.create_model(_config(name, 'fast', **fields))


def test_a_model_without_convolutions_never_starts_onednn(monkeypatch):
  def load():
    raise AssertionError('oneDNN started for a model that never convolves')

  monkeypatch.setattr(onednn, 'load', load)
  assert isinstance(models.create_model(_config('mnist_mlp', 'auto')), models.MnistMLP)
  with pytest.raises(ValueError, match="Unknown config.model.layers 'fast'; choose one of"):
    models.create_model(_config('mnist_mlp', 'fast'))
  with pytest.raises(AssertionError, match='never convolves'):  # the CNNs still take it
    models.create_model(_config('mnist_cnn', 'auto'))
