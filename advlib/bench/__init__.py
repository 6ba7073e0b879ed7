"""The standardized benchmark harness: protocols, evaluation, reports.

Example:
    >>> from advlib import bench
    >>> report = bench.evaluate(keras_model, protocol="fashion-mnist-linf-0.1", out_dir="runs/a")
    >>> report["results"]["robust_accuracy"]["value"]
"""

from advlib.bench.protocol import ProtocolError, available
from advlib.bench.protocol import load as load_protocol
from advlib.bench.reference import reference_model
from advlib.bench.render import compare, markdown
from advlib.bench.runner import evaluate
from advlib.bench.shards import merge, reassess
from advlib.stats import wilson_interval

__all__ = [
    "ProtocolError",
    "available",
    "compare",
    "evaluate",
    "load_protocol",
    "markdown",
    "merge",
    "reassess",
    "reference_model",
    "wilson_interval",
]
