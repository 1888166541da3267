"""Every configuration field, with its default: `catsdogs_jax/defaults.py` (configs start here)."""

from catsdogs_jax.defaults import get_config  # noqa: F401
