"""The small CNN from scratch with what small-data practice adds: BatchNorm, label smoothing, colour jitter,
a moving average of the weights, a larger Adam rate and test-time flipping.

The same four-stage model, 150 px, batch 32 and 100 epochs as `small_cnn_aug_cosine` (which reaches 0.853
test): it still fits its augmented training data only to about 0.89, so the additions are those that help
optimisation or cost nothing in fit (BatchNorm lets the rate double; the average of the weights and the mirror
image are free at test time) rather than stronger regularisers. What each one buys, and what mixup, CutMix,
random resized crops and a global-pool head do when added, is measured by `configs/sweeps/modern_ablation.py`.
"""

from configs import small_cnn_aug_cosine


def get_config():
  config = small_cnn_aug_cosine.get_config()
  config.model.batch_norm = True
  config.optimizer.learning_rate = 1e-3
  config.label_smoothing = 0.1
  config.augment.brightness = 0.2
  config.augment.contrast = 0.2
  config.augment.saturation = 0.2
  # about 500 steps (8 epochs of 63) once ema.warmup_power's warm-up reaches it, near epoch 63
  config.ema.decay = 0.998
  config.eval_flip = True
  return config
