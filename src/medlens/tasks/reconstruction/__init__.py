"""Reconstruction on the task platform: undersampled MRI (and super-resolution)."""
