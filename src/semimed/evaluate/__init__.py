"""Evaluation on the TEST split: metrics (`metrics`) and one trained run scored (`run`)."""

from semimed.evaluate.metrics import classification_metrics, confusion_records
from semimed.evaluate.segmentation import SegmentationScorer

__all__ = ["SegmentationScorer", "classification_metrics", "confusion_records"]
