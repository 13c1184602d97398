"""Image sequences on the task platform: classification, regression and per-frame segmentation
of cines, echo loops and videos (:mod:`medlens.tasks.sequences.task`)."""
