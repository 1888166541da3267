"""The config a workdir was trained with: `--config=configs/run.py:WORKDIR`.

Every after-training mode reads the workdir's config.json by itself; this file is
for changing fields of it on the command line, e.g. to evaluate on other photos:

  python main.py --mode=evaluate --workdir=runs/x --config=configs/run.py:runs/x \
      --config.data.dataset=folder:my_photos  # split/label/image, as in training
"""

from catsdogs_jax.runtime import workdir_files


def get_config(workdir: str):
  return workdir_files.read_run_config(workdir)
