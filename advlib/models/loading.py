"""`load_model`: reads a `.keras` file without letting it run code.

Keras's safe mode is the main guard, but Keras releases before 3.14 have
published bypasses (CVE-2025-1550: a config naming any importable callable;
CVE-2025-8747 and CVE-2025-9906: configs that call `keras.utils.get_file` or
switch safe mode off; CVE-2025-9905: `.h5` files; a path traversal in the
archive). So advlib refuses to load with such a Keras, reads only `.keras`
archives, and checks the archive and its config itself before Keras sees
them: every serialized object must come from Keras, advlib, or the custom
objects the caller named, and functions only from the modules that hold
activations, losses and the like.
"""

from __future__ import annotations

import json
import os
import posixpath
import zipfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

# the first Keras with no known safe-mode bypass (the archive path traversal was fixed last)
MIN_SAFE_KERAS = (3, 14, 0)
_ARCHIVE_MEMBERS = {"config.json", "metadata.json", "model.weights.h5", "model.weights.npz"}
_MAX_CONFIG_BYTES = 64 * 2**20
# functions a config may name: those that serialize activations, losses, metrics, ...
_FUNCTION_MODULES = {
    "keras.activations",
    "keras.losses",
    "keras.metrics",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.ops",
}
_NEVER = {"Lambda", "TFSMLayer"}  # layers that run stored code or load other files


class UnsafeModelError(ValueError):
    """A model file that advlib refuses to load, or a Keras that cannot load it safely."""


def keras_version() -> tuple:
    import keras

    parts = []
    for piece in keras.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def check_keras_is_safe() -> None:
    """Raises UnsafeModelError if the installed Keras has known safe-mode bypasses."""
    import keras

    if keras_version() < MIN_SAFE_KERAS:
        wanted = ".".join(map(str, MIN_SAFE_KERAS))
        raise UnsafeModelError(
            f"Keras {keras.__version__} is installed, and Keras before {wanted} can run code "
            f"from a model file even in safe mode (CVE-2025-1550, CVE-2025-8747, "
            f"CVE-2025-9906, CVE-2025-9905). Upgrade: pip install 'keras>={wanted}'."
        )


def _serialized_objects(node) -> Iterator[Mapping]:
    if isinstance(node, Mapping):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _serialized_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _serialized_objects(value)


def check_config(config, path: str, allowed_modules=()) -> None:
    """Refuses a model config that names anything outside Keras, advlib and
    `allowed_modules`, a function outside the serializable-function modules,
    or a layer that runs stored code."""

    def trusted(module: str) -> bool:
        return (
            module == "keras"
            or module.startswith(("keras.", "advlib."))
            or module in allowed_modules
        )

    for entry in _serialized_objects(config):
        name, module = entry.get("class_name"), entry.get("module")
        if name in _NEVER:
            raise UnsafeModelError(
                f"{path!r} holds a {name} layer, which runs code stored "
                "in the file or loads other files; advlib never loads it."
            )
        if module is None:
            continue
        if not isinstance(module, str) or not trusted(module):
            raise UnsafeModelError(
                f"{path!r} names {name!r} from module {module!r}, which is "
                "neither Keras nor advlib nor a module of the custom "
                "objects given; refused, since loading it could run code."
            )
        if name == "function" and module.startswith("keras") and module not in _FUNCTION_MODULES:
            raise UnsafeModelError(
                f"{path!r} calls the function {entry.get('config')!r} of "
                f"{module!r}; a model config may name functions only from "
                f"{sorted(_FUNCTION_MODULES)}."
            )


def _check_archive(path: str, allowed_modules) -> None:
    if not zipfile.is_zipfile(path):
        raise UnsafeModelError(
            f"cannot load model {path!r}: it is not a .keras archive (a zip file)."
        )
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            parts = posixpath.normpath(name).split("/")
            if name.startswith(("/", "\\")) or ".." in parts or ":" in name or "\\" in name:
                raise UnsafeModelError(
                    f"{path!r} holds the member {name!r}, a path that leaves the archive; refused."
                )
            if name not in _ARCHIVE_MEMBERS and not name.startswith("assets/"):
                raise UnsafeModelError(
                    f"{path!r} holds an unexpected member {name!r}; a "
                    f".keras archive holds only {sorted(_ARCHIVE_MEMBERS)} "
                    "and assets/."
                )
        if "config.json" not in archive.namelist():
            raise UnsafeModelError(f"{path!r} has no config.json: not a .keras model.")
        if archive.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
            raise UnsafeModelError(
                f"{path!r}: config.json is larger than {_MAX_CONFIG_BYTES // 2**20} MiB; refused."
            )
        try:
            config = json.loads(archive.read("config.json"))
        except (ValueError, UnicodeDecodeError) as error:
            raise UnsafeModelError(f"{path!r}: config.json is not valid JSON ({error}).") from error
    check_config(config, path, allowed_modules)


def load_model(
    path: str | os.PathLike, custom_objects: dict[str, object] | None = None
) -> keras.Model:
    """Loads a `.keras` model in safe mode, after advlib's own checks.

    Args:
        path: a `.keras` file.
        custom_objects: name -> class or function, for models with layers of
            their own; their modules are trusted in the config.

    Returns:
        The Keras model.

    Raises:
        UnsafeModelError (a ValueError): an unsafe Keras, a file that is not a
            `.keras` archive, or an archive or config that could run code.
        ValueError: a missing file, or one that Keras cannot load.

    Example:
        >>> model = load_model("robust_cnn.keras")
    """
    import keras

    import advlib.models.testbeds
    import advlib.qnn.layers  # noqa: F401  (registers the QNN layers)

    check_keras_is_safe()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"model file {path!r} does not exist"
            f"{' (it is a directory)' if os.path.isdir(path) else ''}."
        )
    if not path.endswith(".keras"):
        raise UnsafeModelError(
            f"cannot load model {path!r}: advlib loads only .keras files "
            "(legacy .h5 files can carry code); re-save the model with "
            "model.save('name.keras') in a trusted environment."
        )
    custom_objects = dict(custom_objects or {})
    modules = {getattr(value, "__module__", None) for value in custom_objects.values()}
    _check_archive(path, {m for m in modules if isinstance(m, str)})
    try:
        return keras.models.load_model(path, custom_objects=custom_objects, safe_mode=True)
    except Exception as error:
        raise ValueError(
            f"cannot load model {path!r} (safe mode): {type(error).__name__}: {error}"
        ) from error
