"""The input side: images in, batches out.

tfds and folder datasets (`input_pipeline`), the checks of messy folders
(`folders`), batching and padding for exact evaluation (`batching`), on-device
augmentation (`augment`), preprocessing by name (`preprocessing`) and the cache
of a frozen base's features (`feature_cache`).

May import: `catsdogs_jax.models`, `runtime` and `defaults`. Only
`input_pipeline` and `folders` import TensorFlow.
"""
