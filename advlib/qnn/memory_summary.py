"""Parameters and memory of a quantized model, by precision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from advlib.qnn.layers import QuantConv2D, QuantDense


def _weight_bits(layer) -> int:
    quantizer = getattr(layer, "kernel_quantizer", None)
    return 32 if quantizer is None else int(quantizer.precision)


def summary(model: keras.Model, print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Reports each layer's parameters and memory at its deployed precision.

    Kernels of quantized layers count at their quantizer's bits (binary
    kernels pack 32 weights in a 4-byte word); every other parameter (biases,
    BatchNorm statistics) at 32 bits.

    Args:
        model: a model built from `advlib.qnn` layers.
        print_fn: prints the table (None: nothing is printed).

    Returns:
        {"layers": [...], "by_precision": {bits: {"parameters", "bytes"}},
        "total_bytes", "float32_bytes", "ratio"} where ratio is the float32
        size over the deployed size.
    """
    rows: list[dict[str, Any]] = []
    by_precision: dict[int, dict[str, int]] = {}
    for layer in model.layers:
        for weight in layer.weights:
            count = int(np.prod(weight.shape))
            is_kernel = isinstance(layer, (QuantDense, QuantConv2D)) and weight is layer.kernel
            bits = _weight_bits(layer) if is_kernel else 32
            packed = int(np.ceil(count * bits / 32)) * 4
            rows.append(
                dict(
                    layer=layer.name,
                    weight=weight.name,
                    shape=tuple(weight.shape),
                    parameters=count,
                    bits=bits,
                    bytes=packed,
                    float32_bytes=4 * count,
                )
            )
            entry = by_precision.setdefault(bits, {"parameters": 0, "bytes": 0})
            entry["parameters"] += count
            entry["bytes"] += packed
    total = sum(r["bytes"] for r in rows)
    float_total = sum(r["float32_bytes"] for r in rows)
    result = dict(
        layers=rows,
        by_precision=by_precision,
        total_bytes=total,
        float32_bytes=float_total,
        ratio=float_total / max(total, 1),
    )
    if print_fn is not None:
        print_fn(format_summary(result, model.name))
    return result


def format_summary(result, name="model") -> str:
    lines = [
        f"Memory of {name} by precision",
        f"{'layer':<24}{'weight':<18}{'params':>10}{'bits':>6}{'bytes':>12}{'float32':>12}",
    ]
    for r in result["layers"]:
        lines.append(
            f"{r['layer'][:23]:<24}{r['weight'][:17]:<18}{r['parameters']:>10}"
            f"{r['bits']:>6}{r['bytes']:>12}{r['float32_bytes']:>12}"
        )
    lines.append("")
    for bits, entry in sorted(result["by_precision"].items()):
        lines.append(
            f"{bits:>2}-bit: {entry['parameters']:>10} parameters, {entry['bytes']:>10} bytes"
        )
    lines.append(
        f"total: {result['total_bytes']} bytes, against {result['float32_bytes']} "
        f"in float32 ({result['ratio']:.1f}x smaller)"
    )
    return "\n".join(lines)
