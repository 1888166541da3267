"""EfficientNet-Lite0 frozen base + the tutorial's augmentation + a dense head, end to end.

The base of efficientnet_lite0_features, frozen (its BatchNorm layers in
inference mode, as Keras' `trainable = False`), under the small CNN's
augmentation (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, flips); the
pooled features feed Dropout(0.2)-Dense(1). Adam 1e-3 for the head.
  python main.py --config=configs/efficientnet_lite0_transfer.py --workdir=runs/lite0_transfer
"""

from configs import efficientnet_lite0_features, small_cnn_aug


def get_config():
  config = efficientnet_lite0_features.get_config()
  config.features.enabled = False
  config.augment = small_cnn_aug.get_config().augment
  config.trainable = ('^head_',)
  config.num_epochs = 10
  return config
