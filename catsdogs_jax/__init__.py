"""catsdogs_jax: image classification in functional JAX, built around cats vs. dogs.

What a research script imports (examples/ has two that run from any folder):

  from catsdogs_jax import defaults                  # get_config(): every field, its default
  from catsdogs_jax import models                    # MODELS, create_model(config), input_shape
  from catsdogs_jax.data import input_pipeline       # describe(config), ImagePipeline(config, split, ...)
  from catsdogs_jax.runtime import parallel          # create_mesh(), jit_train_step, prefetch_to_mesh
  from catsdogs_jax.training import optimizers, steps, train_state   # the optax chain, pure steps, state
  from catsdogs_jax.training import train            # train_and_evaluate(config, workdir, hooks)
  from catsdogs_jax.runtime import checkpointing     # Checkpoints(workdir, config): Orbax, last N + best
  from catsdogs_jax.weights import loading           # read('pretrained:NAME' | converted dir | workdir)
  from catsdogs_jax.weights import keras_h5, pytorch  # converters, by source format

Importing the package does nothing else; only `data.input_pipeline` and
`data.folders` import TensorFlow.
"""

__version__ = '0.1.0'
