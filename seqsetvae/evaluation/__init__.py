"""Evaluation: discrimination and calibration metrics with bootstrap confidence intervals, curve data."""
