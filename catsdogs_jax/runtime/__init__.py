"""Where a run executes and what it leaves behind: devices, processes, the workdir.

The device mesh and shardings (`parallel`), several processes
(`distributed`), SIGTERM and preemption (`preemption`), the workdir's lock,
config and model signature (`workdir_files`) and its checkpoints
(`checkpointing`).

May import: nothing of the package but `runtime` itself (no models, no data).
"""
