"""Random exported networks built with NumPy alone (no TensorFlow), for the
engine's tests on machines that have only NumPy and CuPy."""

import numpy as np

from advlib.qnn.engine import pack_signs
from advlib.qnn.engine import spec as spec_io


def stepped_levels(step):
    """SteppedInput's table computed in NumPy: round(level * (1 / (255 step)))."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / (255.0 * step))
    return np.round(levels).astype(np.uint8)


def random_network(
    seed=0,
    input_shape=(9, 7, 2),
    channels=(3, 33),
    dense=(40,),
    classes=5,
    flat=False,
    step=None,
    sparsity=None,
):
    """A random binary network: an 8-bit first layer (on a `SteppedInput` grid of
    `step`, if given), binary layers with "same" padding (+1 and -1), a max-pool, a
    flatten and dense layers. With `sparsity`, every thresholded layer is ternary:
    each weight is masked out with that probability."""
    rng = np.random.default_rng(seed)
    layers, arrays = [], {}
    shape = list(input_shape)
    top = 255 if step is None else int(stepped_levels(step)[-1])

    def add(entry, length, units, last):
        index = len(layers)
        entry.update(
            name=f"l{index}", keras_output=f"l{index}", output="logits" if last else "bits"
        )
        signs = np.where(rng.random((units, length)) < 0.5, -1.0, 1.0)

        def packed(values):
            if entry["type"] == "conv":
                kh, kw = entry["kernel"]
                return pack_signs(values.reshape(units, kh, kw, shape[-1])).reshape(units, -1)
            return pack_signs(values)

        arrays[f"layer{index}/weights"] = packed(signs)
        if sparsity is not None and not last:
            entry["mask"] = True
            kept = rng.random((units, length)) >= sparsity
            arrays[f"layer{index}/mask"] = packed(np.where(kept, 1.0, -1.0))
        bound = top * length if entry["input"] == "uint8" else length
        if entry.get("mask"):  # thresholds within the kept weights' reach
            bound = int(bound * (1 - sparsity))
        if entry["input"] == "uint8" and step is not None:
            entry["input_levels"] = True
            arrays[f"layer{index}/levels"] = stepped_levels(step)
        if last:
            arrays[f"layer{index}/scale"] = rng.normal(size=units).astype(np.float32)
            arrays[f"layer{index}/shift"] = rng.normal(size=units).astype(np.float32)
        else:
            arrays[f"layer{index}/threshold"] = rng.integers(
                -bound // 4, bound // 4 + 1, units
            ).astype(np.int64)
            arrays[f"layer{index}/flip"] = rng.random(units) < 0.3
        layers.append(entry)

    if flat:
        layers.append(
            dict(type="flatten", in_shape=list(shape), out_shape=[int(np.prod(shape))], name="flat")
        )
        shape = [int(np.prod(shape))]
    else:
        for i, width in enumerate(channels):
            h, w, c = shape
            entry = dict(
                type="conv",
                in_shape=list(shape),
                out_shape=[h, w, width],
                kernel=[3, 3],
                strides=[1, 1],
                pads=[[1, 1], [1, 1]],
                pad_value=0.0 if i == 0 else (1.0 if i % 2 else -1.0),
                input="uint8" if i == 0 else "binary",
            )
            add(entry, 9 * c, width, False)
            shape = [h, w, width]
            if i == 0:
                out = [(h + 1 - 2) // 2 + 1, (w + 1 - 2) // 2 + 1, width]
                layers.append(
                    dict(
                        type="maxpool",
                        in_shape=list(shape),
                        out_shape=out,
                        pool=[2, 2],
                        strides=[2, 2],
                        pads=[[0, 1], [0, 1]],
                        name="pool",
                    )
                )
                shape = out
        layers.append(
            dict(type="flatten", in_shape=list(shape), out_shape=[int(np.prod(shape))], name="flat")
        )
        shape = [int(np.prod(shape))]
    widths = list(dense) + [classes]
    for i, units in enumerate(widths):
        entry = dict(
            type="dense",
            in_shape=list(shape),
            out_shape=[units],
            input="uint8" if flat and i == 0 else "binary",
        )
        add(entry, shape[0], units, i == len(widths) - 1)
        shape = [units]
    spec = {
        "format": spec_io.FORMAT,
        "version": spec_io.version_for(layers),
        "word_bits": 32,
        "input_shape": list(input_shape),
        "layers": layers,
    }
    spec_io.validate(spec, arrays)
    return spec, arrays
