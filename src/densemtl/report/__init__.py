"""Reporting: console tables, plots and prediction images (Δm% lives in densemtl.metrics)."""
