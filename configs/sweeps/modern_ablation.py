"""`configs/small_cnn_modern.py` with each of its additions removed in turn, and four more tricks added in turn.

At 48 px and 20 epochs (the cosine decay then ends at epoch 20), so that 16 runs fit in about an hour of a
2-core CPU (about 3 minutes each); every variant trains the same epochs:

  python main.py --config=configs/small_cnn_modern.py --sweep=configs/sweeps/modern_ablation.py \
      --sweep_seeds=2 --workdir=runs/modern_ablation DATA \
      --config.data.image_size=48 --config.num_epochs=20
  python main.py --mode=compare --workdirs='runs/modern_ablation/*' --workdir=docs/results/modern_ablation_48px
"""


def get_sweep():
  return [
      {},  # the recipe
      # each addition removed
      {'model.batch_norm': False, 'optimizer.learning_rate': 5e-4},  # small_cnn_aug_cosine's rate
      {'label_smoothing': 0.0},
      {'augment.brightness': 0.0, 'augment.contrast': 0.0, 'augment.saturation': 0.0},
      {'ema.decay': 0.0},
      # each trick added
      {'augment.crop_scale': (0.35, 1.0)},
      {'mixup.mixup_alpha': 0.2, 'mixup.cutmix_alpha': 1.0},  # one of the two per batch
      # global average pooling instead of Flatten before the dense layers: the same model at 48 px,
      # whose last map is 1x1 (it differs at 150 px, 7x7)
      {'model.pooling': 'avg'},
  ]
