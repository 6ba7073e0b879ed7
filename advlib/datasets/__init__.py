"""Data sets as float32 NHWC images in [0, 1] with integer labels."""

from advlib.datasets.idx import read_idx, write_idx
from advlib.datasets.loaders import NAMES, keras_cache_dir, load

__all__ = ["NAMES", "keras_cache_dir", "load", "read_idx", "write_idx"]
