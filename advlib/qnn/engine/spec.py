"""The exported network format: a self-describing `.npz`. NumPy only.

The archive holds `spec`, a JSON document, and the arrays `layer{i}/{name}`.
The spec lists the layers in order; each has a `type` and the shapes it maps
between (per example):

- "dense": in_shape [K], out_shape [N]; arrays weights (N, words(K)) uint32.
- "conv": in_shape [H, W, C], out_shape [H', W', F], kernel, strides,
  pads [[top, bottom], [left, right]], pad_value (+1, -1, or 0 for 8-bit
  inputs); arrays weights (F, kh * kw * words(C)) uint32.
- "maxpool": pool, strides, pads (bitwise OR over packed words).
- "flatten": (H, W, C) to (H * W * C,), Keras's order.

Dense and conv layers also have `input` ("uint8": the 8-bit first layer, or
"binary") and `output`: "bits", with arrays threshold (N,) int64 and flip
(N,) bool, or "logits", with scale and shift (N,) float32.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any, Dict, List

import numpy as np

from advlib.qnn.engine.packing import words_for

FORMAT = "advlib-binary-engine"
VERSION = 1
_COMPUTE = ("dense", "conv")


def layer_arrays(index: int, layer: Dict[str, Any]) -> Dict[str, tuple]:
    """The arrays a layer needs, with their dtypes and shapes."""
    if layer["type"] not in _COMPUTE:
        return {}
    units = layer["out_shape"][-1]
    if layer["type"] == "dense":
        wshape = (units, words_for(layer["in_shape"][0]))
    else:
        kh, kw = layer["kernel"]
        wshape = (units, kh * kw * words_for(layer["in_shape"][-1]))
    arrays = {f"layer{index}/weights": (np.uint32, wshape)}
    if layer["output"] == "bits":
        arrays[f"layer{index}/threshold"] = (np.int64, (units,))
        arrays[f"layer{index}/flip"] = (np.bool_, (units,))
    else:
        arrays[f"layer{index}/scale"] = (np.float32, (units,))
        arrays[f"layer{index}/shift"] = (np.float32, (units,))
    return arrays


def _expected_out_shape(layer) -> List[int]:
    kind, shape = layer["type"], layer["in_shape"]
    if kind == "flatten":
        return [int(np.prod(shape))]
    if kind == "dense":
        return list(layer["out_shape"])
    (top, bottom), (left, right) = layer["pads"]
    size = layer["kernel"] if kind == "conv" else layer["pool"]
    height = (shape[0] + top + bottom - size[0]) // layer["strides"][0] + 1
    width = (shape[1] + left + right - size[1]) // layer["strides"][1] + 1
    channels = layer["out_shape"][-1] if kind == "conv" else shape[-1]
    return [height, width, channels]


def validate(spec: Dict[str, Any], arrays: Dict[str, np.ndarray], source: str = "spec"):
    """Checks that the layers chain and that every array is present and well-shaped.

    Raises:
        ValueError: naming the first inconsistency.
    """
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ValueError(f"{source} is not an advlib binary-engine network of version "
                         f"{VERSION} (format={spec.get('format')!r}, "
                         f"version={spec.get('version')!r}).")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{source} lists no layers.")
    shape = list(spec["input_shape"])
    for index, layer in enumerate(layers):
        where = f"{source}: layer {index} ({layer.get('type')!r})"
        if layer.get("type") not in _COMPUTE + ("maxpool", "flatten"):
            raise ValueError(f"{where} has an unknown type.")
        if list(layer["in_shape"]) != shape:
            raise ValueError(f"{where} expects input shape {layer['in_shape']}, but the "
                             f"previous layer produces {shape}: the shapes do not chain.")
        if _expected_out_shape(layer) != list(layer["out_shape"]):
            raise ValueError(f"{where} declares output shape {layer['out_shape']}, but its "
                             f"input and parameters give {_expected_out_shape(layer)}.")
        if layer["type"] in _COMPUTE:
            if layer.get("input") not in ("uint8", "binary"):
                raise ValueError(f"{where} has input {layer.get('input')!r}; "
                                 "expected 'uint8' or 'binary'.")
            if layer.get("output") not in ("bits", "logits"):
                raise ValueError(f"{where} has output {layer.get('output')!r}.")
            if (layer["output"] == "logits") != (index == len(layers) - 1):
                raise ValueError(f"{where}: only the last layer outputs logits.")
        for name, (dtype, array_shape) in layer_arrays(index, layer).items():
            if name not in arrays:
                raise ValueError(f"{source} lacks the array {name!r}.")
            if arrays[name].dtype != dtype or tuple(arrays[name].shape) != array_shape:
                raise ValueError(f"{source}: array {name!r} has dtype {arrays[name].dtype} "
                                 f"and shape {arrays[name].shape}; expected "
                                 f"{np.dtype(dtype)} and {array_shape}.")
        shape = list(layer["out_shape"])
    if layers[-1]["type"] not in _COMPUTE or layers[-1]["output"] != "logits":
        raise ValueError(f"{source}: the last layer must be dense or conv with logits output.")


def save(path: str, spec: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    validate(spec, arrays)
    np.savez(path, spec=np.array(json.dumps(spec)), **arrays)


def load(path: str):
    """Reads and validates an exported network; returns (spec, arrays)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"cannot read the engine file {path!r}: it is missing, corrupted "
                         f"or truncated ({type(error).__name__}: {error}).") from error
    if "spec" not in contents:
        raise ValueError(f"{path!r} holds no 'spec': not an advlib binary-engine network.")
    try:
        spec = json.loads(str(contents.pop("spec")))
    except json.JSONDecodeError as error:
        raise ValueError(f"the spec in {path!r} is not valid JSON: {error}") from error
    try:
        validate(spec, contents, source=repr(path))
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"the spec in {path!r} is malformed: missing or bad field "
                         f"{error}.") from error
    return spec, contents
