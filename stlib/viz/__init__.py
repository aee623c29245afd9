"""Plots a researcher would rather see than read."""
from stlib.viz.boxes import draw_detections, show_predictions
from stlib.viz.curves import plot_training_curves

__all__ = ["draw_detections", "show_predictions", "plot_training_curves"]
