"""Segmentation as a task: losses on class logits (metrics live in :mod:`mrlearn.evaluation.segmentation`)."""
