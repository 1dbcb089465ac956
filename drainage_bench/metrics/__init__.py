"""Metric formulas on numpy arrays (numpy and scikit-learn only: no torch), shared by the trainer and the analysis."""
