"""Plugin losses."""
from .class_weighted_ce_loss import ClassWeightedCrossEntropyLoss  # noqa: F401
