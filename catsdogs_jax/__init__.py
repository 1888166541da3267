"""catsdogs_jax: image classification in functional JAX, built around cats vs. dogs.

Importing the package, the models, the steps or the optimisers does not import
TensorFlow; only `catsdogs_jax.data.input_pipeline` does.
"""

__version__ = '0.1.0'
