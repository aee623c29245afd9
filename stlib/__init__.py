"""stlib: a notebook-first JAX workbook for "Rethinking Pre-training and Self-training" (Zoph et al. 2020)."""
from stlib import devices as _devices

_devices.configure_host_devices()

__version__ = "0.1.0"
