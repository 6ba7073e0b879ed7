"""Adversarial attacks with cleverhans's class API and parameter names.

Every module of this package is imported here, and every concrete `Attack`
subclass it defines is registered under its class name and exported: a new
attack is one new file. `by_name("SPSA")` returns the class.

Example:
    >>> from advlib.attacks import FastGradientMethod
    >>> x_adv = FastGradientMethod(model).generate_np(x, eps=0.1, clip_min=0., clip_max=1.)
"""

import importlib
import pkgutil

from advlib import losses
from advlib.attacks.base import Attack, by_name, names, random_targets, refuse_true_class_targets
from advlib.attacks.gradient import GradientAttack
from advlib.attacks.result import AttackResult
from advlib.attacks.utils import (
    adam_update,
    clip_eta,
    optimize_linear,
    per_example,
    project_l1_ball,
    random_lp_vector,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({name: by_name(name) for name in names()})

__all__ = [
    "Attack",
    "AttackResult",
    "GradientAttack",
    "adam_update",
    "by_name",
    "clip_eta",
    "losses",
    "names",
    "optimize_linear",
    "per_example",
    "project_l1_ball",
    "random_lp_vector",
    "random_targets",
    "refuse_true_class_targets",
    *names(),
]
