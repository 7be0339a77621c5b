"""Training: fit a float model on a run's splits (train.py) with optional teacher targets (distill.py)."""
