"""On the Akida model: deploy and map (deploy.py), readout refits (readout.py, learn.py), Akida 1.0 on-chip
learning (edge.py)."""
