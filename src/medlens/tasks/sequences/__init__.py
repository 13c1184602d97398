"""Sequence models on cine MRI: temporal segmentation and regression of a cine's values."""
