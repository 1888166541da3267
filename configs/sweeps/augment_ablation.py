"""Each of the tutorial's seven augmentation settings turned off in turn, next to all of them on.

  python main.py --config=configs/small_cnn_aug.py --sweep=configs/sweeps/augment_ablation.py \
      --sweep_seeds=2 --workdir=runs/aug_ablation
"""


def get_sweep():
  return [
      {},  # baseline: every augmentation on
      {'augment.rotation_range': 0.0},
      {'augment.width_shift_range': 0.0},
      {'augment.height_shift_range': 0.0},
      {'augment.shear_range': 0.0},
      {'augment.zoom_range': 0.0},
      {'augment.horizontal_flip': False},
      {'augment.fill_mode': 'constant'},  # black outside the image instead of the nearest pixel
  ]
