"""Evaluation on the TEST split: metrics (`metrics`) and one trained run scored (`run`)."""

from semimed.evaluate.metrics import (
    SegmentationScorer,
    classification_metrics,
    confusion_records,
)

__all__ = ["SegmentationScorer", "classification_metrics", "confusion_records"]
