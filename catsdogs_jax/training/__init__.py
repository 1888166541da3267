"""One run, from a config to a trained state.

The config checks (`config_checks`), the run assembled from them
(`experiment`), the state (`train_state`), the pure steps (`steps`),
optimizers and schedules (`optimizers`), losses (`losses`), metrics
(`metrics`), log.csv, early stopping and the progress line (`epoch_log`), and
the loop itself, read top to bottom (`train`).

May import: `models`, `data`, `runtime`, `weights`, `defaults`; never `tools`.
"""
