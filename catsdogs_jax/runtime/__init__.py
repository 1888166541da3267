"""Where a run executes and what it leaves behind: devices, processes, the workdir.

The device mesh and shardings (`parallel`), several processes
(`distributed`), SIGTERM and preemption (`preemption`), the workdir's lock,
config and model signature (`workdir_files`), its checkpoints
(`checkpointing`), and host memory on huge pages for XLA:CPU (`host_memory`).

May import: `catsdogs_jax.defaults` only (no models, no data).
"""
