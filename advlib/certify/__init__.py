"""Certified robustness for any Keras classifier: randomized smoothing.

Example:
    >>> from advlib.certify import SmoothedClassifier
    >>> result = SmoothedClassifier(model, sigma=0.25).certify(x, n0=100, n=10_000, seed=0)
    >>> result.certified_accuracy(y, radii=[0.0, 0.25, 0.5])
"""

from advlib.certify.smoothing import ABSTAIN, CertificationResult, SmoothedClassifier
from advlib.stats import clopper_pearson_lower

__all__ = ["ABSTAIN", "CertificationResult", "SmoothedClassifier", "clopper_pearson_lower"]
