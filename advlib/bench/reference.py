"""The reference model that `advlib bench` evaluates when given none."""

from __future__ import annotations

import os

REFERENCE_EPOCHS = 15


def cache_dir() -> str:
    """$ADVLIB_CACHE, else $XDG_CACHE_HOME/advlib, else ~/.cache/advlib."""
    if os.environ.get("ADVLIB_CACHE"):
        return os.environ["ADVLIB_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "advlib")


def reference_model(dataset: str = "digits", verbose: bool = True):
    """The digits CNN, trained once (seed 0, 15 epochs) and cached as a .keras file."""
    from advlib.datasets import load
    from advlib.models import small_cnn, train_classifier
    from advlib.models.loading import load_model

    path = os.path.join(cache_dir(), "reference", f"{dataset}_cnn.keras")
    if os.path.exists(path):
        return load_model(path), path
    if verbose:
        print(f"training the reference {dataset} CNN once; it is cached at {path}")
    (x_train, y_train), _ = load(dataset)
    model = train_classifier(
        small_cnn(x_train.shape[1:], name=f"reference_{dataset}_cnn"),
        x_train,
        y_train,
        epochs=REFERENCE_EPOCHS,
        seed=0,
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)
    return model, path
