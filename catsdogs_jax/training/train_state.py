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


def make_init_fn(model, tx: optax.GradientTransformation, plateau, image_shape):
  """Returns `init(rng) -> TrainState`, pure, to jit or `jax.eval_shape`."""

  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, init_rng, image_shape)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        plateau=plateau.init(params),
        rng=state_rng,
    )

  return init


def abstract_state(init_fn, mesh, seed: int):
  """Shapes, dtypes and (replicated) shardings of `init_fn`'s TrainState, without computing it:
  what `Checkpoints.restore` restores into."""
  rep = parallel.replicated(mesh)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(seed))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)
