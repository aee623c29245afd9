"""Plots a researcher would rather see than read."""
from stlib.viz.augment import draw_example, fidelity_markdown, fidelity_table, op_gallery, policy_gallery
from stlib.viz.boxes import draw_detections, show_predictions
from stlib.viz.curves import plot_training_curves

__all__ = ["draw_detections", "show_predictions", "plot_training_curves", "draw_example", "op_gallery",
           "policy_gallery", "fidelity_table", "fidelity_markdown"]
