"""The label conventions every loss and every data pipeline share (no torch import)."""

IGNORE_INDEX = -100  # the label of a position no loss reads: PyTorch's cross_entropy default ignore_index
LOSS_REDUCTIONS = ("token", "sample", "square")  # InternVL's stage-3 loss reductions (losses/lm.py)
