"""Weights from elsewhere: published files converted into ours, and loading them.

The converted form and the strict fill every converter shares (`converted`),
one module per source format (`keras_h5`, `pytorch`), published weight sets
fetched, verified and cached by name (`pretrained`), reading any of them or a
workdir's checkpoint for `config.init_from` (`loading`), and the command
(`python -m catsdogs_jax.weights.convert`).

May import: `models`, `data`, `runtime`, `defaults`.
"""
