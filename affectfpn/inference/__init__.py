"""Inference: image loading, face detection, alignment and prediction."""
