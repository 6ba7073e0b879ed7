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
(N,) bool, or "logits", with scale and shift (N,) float32. A "uint8" layer
with `input_levels` true (a `SteppedInput` grid) reads each 8-bit level through
the array levels (256,) uint8, nondecreasing, in steps of 0 or 1. A "bits"
layer with `mask` true has ternary weights (a learned mask, EEV's BinMask): the
array mask, shaped and packed as weights, has bit 1 where the weight takes part
and 0 where it is zero, and no bit set past the fan-in.
"""

from __future__ import annotations

import json
import math
import zipfile
from typing import Any

import numpy as np

from advlib.qnn.engine.packing import pack_bits, unpack_bits, words_for

FORMAT = "advlib-binary-engine"
# version 2 adds input_levels, version 3 masks; a network is written in the oldest
# version that holds it, so that older readers load it (and refuse, rather than
# misread, what they do not know)
VERSION = 3
VERSIONS = (1, 2, 3)
_COMPUTE = ("dense", "conv")


def layer_arrays(index: int, layer: dict[str, Any]) -> dict[str, tuple]:
    """The arrays a layer needs, with their dtypes and shapes."""
    if layer["type"] not in _COMPUTE:
        return {}
    units = layer["out_shape"][-1]
    if layer["type"] == "dense":
        wshape = (units, words_for(layer["in_shape"][0]))
    else:
        kh, kw = layer["kernel"]
        wshape = (units, kh * kw * words_for(layer["in_shape"][-1]))
    arrays: dict[str, tuple[type, tuple[int, ...]]] = {f"layer{index}/weights": (np.uint32, wshape)}
    if layer.get("input_levels"):
        arrays[f"layer{index}/levels"] = (np.uint8, (256,))
    if layer.get("mask"):
        arrays[f"layer{index}/mask"] = (np.uint32, wshape)
    if layer["output"] == "bits":
        arrays[f"layer{index}/threshold"] = (np.int64, (units,))
        arrays[f"layer{index}/flip"] = (np.bool_, (units,))
    else:
        arrays[f"layer{index}/scale"] = (np.float32, (units,))
        arrays[f"layer{index}/shift"] = (np.float32, (units,))
    return arrays


def version_for(layers: list[dict[str, Any]]) -> int:
    """The oldest version that holds these layers: 3 with masks, 2 with
    input_levels, else 1."""
    if any(layer.get("mask") for layer in layers):
        return 3
    return 2 if any(layer.get("input_levels") for layer in layers) else 1


def fan_in(layer: dict[str, Any]) -> int:
    """Inputs per unit of a dense or conv layer."""
    if layer["type"] == "dense":
        return int(layer["in_shape"][0])
    kh, kw = layer["kernel"]
    return int(kh * kw * layer["in_shape"][-1])


def weight_bits(layer: dict[str, Any], words: np.ndarray) -> np.ndarray:
    """A dense or conv layer's packed weights as (units, fan-in) booleans (True =
    +1), in a Keras kernel's (row, column, channel) order. A conv kernel packs the
    channels of each of its kh * kw positions into words of their own."""
    if layer["type"] == "dense":
        return unpack_bits(words, fan_in(layer))
    kh, kw = layer["kernel"]
    units = words.shape[0]
    return unpack_bits(words.reshape(units, kh * kw, -1), layer["in_shape"][-1]).reshape(units, -1)


def pack_like_weights(layer: dict[str, Any], bits: np.ndarray) -> np.ndarray:
    """(units, fan-in) booleans packed as a layer's weights: `weight_bits`'s inverse."""
    if layer["type"] == "dense":
        return pack_bits(bits)
    kh, kw = layer["kernel"]
    units = bits.shape[0]
    return pack_bits(bits.reshape(units, kh * kw, -1)).reshape(units, -1)


def weight_values(layer: dict[str, Any], arrays: dict[str, np.ndarray], index: int) -> np.ndarray:
    """A dense or conv layer's weights as (units, fan-in) int8 of -1, 0 (masked
    out) and +1, in `weight_bits`'s order."""
    signs = np.where(weight_bits(layer, arrays[f"layer{index}/weights"]), 1, -1).astype(np.int8)
    if layer.get("mask"):
        signs[~weight_bits(layer, arrays[f"layer{index}/mask"])] = 0
    return signs


def output_shape(layer) -> list[int]:
    """A layer's output shape from its input shape and parameters (a dense or conv
    layer's width is its `out_shape`'s last entry)."""
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


def _positive_ints(value, length=None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and len(value) > 0
        and all(type(v) is int and v > 0 for v in value)
    )


def _check_fields(layer, where: str) -> None:
    """The layer's own fields have the right types, before any arithmetic on them."""
    for key in ("in_shape", "out_shape"):
        if not _positive_ints(layer.get(key)):
            raise ValueError(
                f"{where}: {key} must be a list of positive integers, got {layer.get(key)!r}."
            )
    kind = layer["type"]
    sizes = {"conv": ("kernel", "strides"), "maxpool": ("pool", "strides")}.get(kind, ())
    for key in sizes:
        if not _positive_ints(layer.get(key), 2):
            raise ValueError(
                f"{where}: {key} must be two positive integers, got {layer.get(key)!r}."
            )
    if sizes:
        pads = layer.get("pads")
        if not (
            isinstance(pads, list)
            and len(pads) == 2
            and all(
                isinstance(p, list) and len(p) == 2 and all(type(v) is int and v >= 0 for v in p)
                for p in pads
            )
        ):
            raise ValueError(
                f"{where}: pads must be [[top, bottom], [left, right]] of "
                f"non-negative integers, got {pads!r}."
            )
        if len(layer["in_shape"]) != 3:
            raise ValueError(
                f"{where}: in_shape must be [height, width, channels], got {layer['in_shape']!r}."
            )
    if kind == "conv" and layer.get("pad_value") not in (-1, 0, 1):
        raise ValueError(f"{where}: pad_value must be -1, 0 or +1, got {layer.get('pad_value')!r}.")


def validate_structure(spec) -> None:
    """Checks the spec's own fields (types, positive sizes), before any array is read.

    Raises:
        ValueError: naming the first bad field.
    """
    if (
        not isinstance(spec, dict)
        or spec.get("format") != FORMAT
        or spec.get("version") not in VERSIONS
    ):
        got = (
            spec if not isinstance(spec, dict) else {k: spec.get(k) for k in ("format", "version")}
        )
        raise ValueError(
            f"spec is not an advlib binary-engine network of a version in {VERSIONS} ({got!r})."
        )
    if not _positive_ints(spec.get("input_shape")):
        raise ValueError(
            f"spec input_shape must be a list of positive integers, got "
            f"{spec.get('input_shape')!r}."
        )
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("spec lists no layers.")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ValueError(f"spec layer {index} must be a mapping, got {type(layer).__name__}.")
        where = f"layer {index} ({layer.get('type')!r})"
        if layer.get("type") not in _COMPUTE + ("maxpool", "flatten"):
            raise ValueError(f"{where} has an unknown type.")
        _check_fields(layer, where)


def validate(spec: dict[str, Any], arrays: dict[str, np.ndarray], source: str = "spec"):
    """Checks that the layers chain and that every array is present and well-shaped.

    Raises:
        ValueError: naming the first inconsistency.
    """
    try:
        validate_structure(spec)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    layers = spec["layers"]
    shape = list(spec["input_shape"])
    for index, layer in enumerate(layers):
        where = f"{source}: layer {index} ({layer.get('type')!r})"
        if list(layer["in_shape"]) != shape:
            raise ValueError(
                f"{where} expects input shape {layer['in_shape']}, but the "
                f"previous layer produces {shape}: the shapes do not chain."
            )
        if output_shape(layer) != list(layer["out_shape"]):
            raise ValueError(
                f"{where} declares output shape {layer['out_shape']}, but its "
                f"input and parameters give {output_shape(layer)}."
            )
        if layer["type"] in _COMPUTE:
            if layer.get("input") not in ("uint8", "binary"):
                raise ValueError(
                    f"{where} has input {layer.get('input')!r}; expected 'uint8' or 'binary'."
                )
            if layer.get("input_levels") not in (None, False, True) or (
                layer.get("input_levels")
                and (layer["input"] != "uint8" or spec["version"] < version_for([layer]))
            ):
                raise ValueError(
                    f"{where}: input_levels must be true or false, and true only for "
                    f"'uint8' input from version 2; got {layer.get('input_levels')!r} with "
                    f"input {layer['input']!r} in version {spec['version']}."
                )
            if layer.get("output") not in ("bits", "logits"):
                raise ValueError(f"{where} has output {layer.get('output')!r}.")
            if (layer["output"] == "logits") != (index == len(layers) - 1):
                raise ValueError(f"{where}: only the last layer outputs logits.")
            if layer.get("mask") not in (None, False, True) or (
                layer.get("mask")
                and (layer["output"] != "bits" or spec["version"] < version_for([layer]))
            ):
                # the verifier's last step counts agreements with +-1 weights
                raise ValueError(
                    f"{where}: mask must be true or false, and true only for a "
                    f"layer with 'bits' output from version 3; got {layer.get('mask')!r} "
                    f"with output {layer['output']!r} in version {spec['version']}."
                )
        for name, (dtype, array_shape) in layer_arrays(index, layer).items():
            if name not in arrays:
                raise ValueError(f"{source} lacks the array {name!r}.")
            if arrays[name].dtype != dtype or tuple(arrays[name].shape) != array_shape:
                raise ValueError(
                    f"{source}: array {name!r} has dtype {arrays[name].dtype} "
                    f"and shape {arrays[name].shape}; expected "
                    f"{np.dtype(dtype)} and {array_shape}."
                )
        if layer.get("mask"):
            mask = arrays[f"layer{index}/mask"]
            if not np.array_equal(pack_like_weights(layer, weight_bits(layer, mask)), mask):
                raise ValueError(f"{where}: the mask sets bits past the fan-in.")
        if layer.get("input_levels"):
            steps = np.diff(arrays[f"layer{index}/levels"].astype(np.int64))
            if not np.isin(steps, (0, 1)).all():
                # the verifier takes every value between two reachable ones as reachable
                raise ValueError(
                    f"{where}: the levels array must be nondecreasing in steps of 0 or 1."
                )
        shape = list(layer["out_shape"])
    if layers[-1]["type"] not in _COMPUTE or layers[-1]["output"] != "logits":
        raise ValueError(f"{source}: the last layer must be dense or conv with logits output.")


def save(path: str, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    validate(spec, arrays)
    np.savez(path, spec=np.array(json.dumps(spec)), **arrays)  # type: ignore[arg-type]


def load(path: str, max_bytes: int = 2**31):
    """Reads and validates an exported network; returns (spec, arrays).

    Only the members that the spec names are read. Each one's header is checked
    against the dtype and shape the spec implies before its data is
    decompressed, so a forged or oversized archive costs no memory.

    Args:
        max_bytes: refuse networks whose arrays would take more memory.

    Raises:
        ValueError: if the file is missing, not an engine network, or inconsistent.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            spec = _read_spec(archive, path)
            try:
                validate_structure(spec)
            except ValueError as error:
                raise ValueError(f"the spec in {path!r} is malformed: {error}") from None
            wanted = {}
            for index, layer in enumerate(spec["layers"]):
                wanted.update(layer_arrays(index, layer))
            total = sum(np.dtype(d).itemsize * math.prod(s) for d, s in wanted.values())
            if total > max_bytes:
                raise ValueError(
                    f"{path!r} declares {total} bytes of arrays, more than max_bytes={max_bytes}."
                )
            arrays = {
                name: _read_member(archive, name, dtype, shape, path)
                for name, (dtype, shape) in wanted.items()
            }
    except (OSError, EOFError, zipfile.BadZipFile, MemoryError) as error:
        raise ValueError(
            f"cannot read the engine file {path!r}: it is missing, corrupted "
            f"or truncated ({type(error).__name__}: {error})."
        ) from error
    validate(spec, arrays, source=repr(path))
    return spec, arrays


_MAX_SPEC_BYTES = 2**20
_HEADER_ROOM = 4096  # an .npy header is far smaller
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _member(archive: zipfile.ZipFile, name: str, path: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(name + ".npy")
    except KeyError:
        raise ValueError(f"{path!r} lacks the array {name!r}.") from None


def _read_spec(archive: zipfile.ZipFile, path: str):
    try:
        info = archive.getinfo("spec.npy")
    except KeyError:
        raise ValueError(
            f"{path!r} holds no 'spec': not an advlib binary-engine network."
        ) from None
    if info.file_size > _MAX_SPEC_BYTES:
        raise ValueError(
            f"{path!r}: its spec is {info.file_size} bytes, more than a spec "
            f"can need ({_MAX_SPEC_BYTES})."
        )
    with archive.open(info) as handle:
        try:
            text = np.lib.format.read_array(handle, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"the spec in {path!r} is not a text array ({error}).") from None
    try:
        return json.loads(str(text))
    except json.JSONDecodeError as error:
        raise ValueError(f"the spec in {path!r} is not valid JSON: {error}") from error


def _read_member(archive: zipfile.ZipFile, name: str, dtype, shape, path: str) -> np.ndarray:
    """One array, after its size and header match what the spec implies."""
    info = _member(archive, name, path)
    nbytes = np.dtype(dtype).itemsize * math.prod(shape)
    if info.file_size > nbytes + _HEADER_ROOM:
        raise ValueError(
            f"{path!r}: array {name!r} is {info.file_size} bytes uncompressed, "
            f"but the spec implies {nbytes} bytes of data."
        )
    with archive.open(info) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version not in _HEADER_READERS:
                raise ValueError(f"unsupported .npy format version {version}")
            found_shape, fortran, found_dtype = _HEADER_READERS[version](handle)
        except ValueError as error:
            raise ValueError(f"{path!r}: array {name!r} has a bad header ({error}).") from None
        if found_dtype != np.dtype(dtype) or tuple(found_shape) != tuple(shape) or fortran:
            raise ValueError(
                f"{path!r}: array {name!r} has dtype {found_dtype} and shape "
                f"{found_shape}; expected {np.dtype(dtype)} and {tuple(shape)}."
            )
        data = handle.read(nbytes + 1)
    if len(data) != nbytes:
        raise ValueError(
            f"{path!r}: array {name!r} holds {len(data)} bytes of data; its shape needs {nbytes}."
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
