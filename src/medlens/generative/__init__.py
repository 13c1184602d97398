"""Generative models: diffusion (the schedule and samplers) for synthetic images."""
