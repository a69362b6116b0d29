"""Data: on-disk sources -> one manifest, preprocessing, splits, in-memory data and streams."""
