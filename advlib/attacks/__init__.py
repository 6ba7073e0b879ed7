"""Adversarial attacks with cleverhans's class API and parameter names.

Example:
    >>> from advlib.attacks import FastGradientMethod
    >>> x_adv = FastGradientMethod(model).generate_np(x, eps=0.1, clip_min=0., clip_max=1.)
"""

from advlib.attacks import losses
from advlib.attacks.base import Attack
from advlib.attacks.carlini_wagner_l2 import CarliniWagnerL2
from advlib.attacks.fast_gradient_method import FastGradientMethod
from advlib.attacks.gradient import GradientAttack
from advlib.attacks.momentum_iterative_method import MomentumIterativeMethod
from advlib.attacks.projected_gradient_descent import (BasicIterativeMethod, MadryEtAl,
                                                       ProjectedGradientDescent, TargetedPGD)
from advlib.attacks.result import AttackResult
from advlib.attacks.saliency_map_method import SaliencyMapMethod
from advlib.attacks.spsa import SPSA
from advlib.attacks.utils import clip_eta, optimize_linear, project_l1_ball, random_lp_vector

__all__ = ["Attack", "AttackResult", "BasicIterativeMethod", "CarliniWagnerL2", "FastGradientMethod", "GradientAttack",
           "MadryEtAl", "MomentumIterativeMethod", "ProjectedGradientDescent", "SPSA", "SaliencyMapMethod",
           "TargetedPGD",
           "clip_eta",
           "losses", "optimize_linear", "project_l1_ball", "random_lp_vector"]
