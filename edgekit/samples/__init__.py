"""Sample model and data shipped with edgekit (trained by examples/train_digits.py)."""
