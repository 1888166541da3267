"""The training state: one pytree holding everything a resumed run needs."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from catsdogs_jax.models import init_variables
from catsdogs_jax.runtime import parallel


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BN)
  opt_state: Any
  plateau: Any  # optax reduce_on_plateau state; its `scale` multiplies updates
  rng: jax.Array  # raw uint32 key data, folded with the step for dropout
  # config.ema: {'params', 'batch_stats'} averaged over the steps (what inference uses); {}
  # when off, so that the tree is the one of states from before the average existed.
  ema: Any = struct.field(default_factory=dict)


def ema_enabled(config) -> bool:
  """Whether the state keeps an average of the weights (a decay of None, as a run config from
  before config.ema reads when reverted, is off)."""
  return bool(config.ema.decay)


def ema_decay(cfg, update):
  """config.ema's decay at `update` (1 for the first step), with timm ModelEmaV3's warm-up."""
  decay = jnp.asarray(cfg.decay, jnp.float32)
  if cfg.warmup_power:
    warm = 1.0 - (1.0 + jnp.asarray(update, jnp.float32)) ** -float(cfg.warmup_power)
    decay = jnp.minimum(decay, warm)
  return decay


def update_ema(ema, variables, decay):
  """ema + (1 - decay) * (variables - ema), leaf by leaf: a leaf that does not move (a frozen
  parameter, a frozen BatchNorm statistic) keeps its value exactly."""
  return jax.tree.map(lambda e, v: e + (1.0 - decay) * (v - e), ema, variables)


def make_init_fn(model, tx: optax.GradientTransformation, plateau, image_shape, ema: bool = False):
  """Returns `init(rng) -> TrainState`, pure, to jit or `jax.eval_shape`.

  With `ema` the state starts its average of the weights at the initial weights.
  """

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, init_rng, image_shape)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        plateau=plateau.init(params),
        rng=state_rng,
        ema={'params': params, 'batch_stats': batch_stats} if ema else {},
    )

  return init


def abstract_state(init_fn, mesh, seed: int):
  """Shapes, dtypes and (replicated) shardings of `init_fn`'s TrainState, without computing it:
  what `Checkpoints.restore` restores into."""
  rep = parallel.replicated(mesh)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(seed))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)
