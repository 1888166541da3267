"""After (and around) training: everything `main.py --mode=...` does besides train.

evaluate, predict, layer views (feature maps, filters), lr_find, curves,
summary, the augmentation preview, sweeps, compare, and the plots they draw.

May import: everything; nothing else imports `tools` (matplotlib stays out
of training).
"""
