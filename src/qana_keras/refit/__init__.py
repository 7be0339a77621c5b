"""Refits after training: the embedding-space SMOTE head (head.py, head_fit.py) and per-class decision offsets
(calibrate.py)."""
