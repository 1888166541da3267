"""The dense head on cached EfficientNet-Lite0 features: weight decay and dropout, chosen on validation.

  python main.py --config=configs/efficientnet_lite0_features.py \
      --sweep=configs/sweeps/lite0_features_head.py --sweep_seeds=2 --workdir=runs/lite0_head_sweep
"""


def get_sweep():
  return [
      {},  # the config: Adam 1e-3, dropout 0.2, no decay
      {'optimizer.weight_decay': 1e-3},
      {'optimizer.weight_decay': 1e-2},
      {'model.dropout_rate': 0.5},
      {'optimizer.learning_rate': 1e-4},
      {'checkpoint.best_monitor': 'val_loss'},
  ]
