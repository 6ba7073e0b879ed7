"""advlib: adversarial robustness for TensorFlow/Keras models."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "advlib", "__init__.py"), encoding="utf-8") as handle:
    VERSION = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
    README = handle.read()

# Which TensorFlow distribution to install. The default, tensorflow-cpu, is a
# third of the size of the full wheel and installs quickly wherever tests run.
# Users with NVIDIA GPUs build with ADVLIB_TENSORFLOW="tensorflow[and-cuda]",
# which brings the CUDA build of TensorFlow and its CUDA libraries. Platforms
# with no tensorflow-cpu wheel (macOS, ARM Linux) get the plain `tensorflow`.
TENSORFLOW = os.environ.get("ADVLIB_TENSORFLOW")
CPU_WHEELS = (
    "(platform_system == 'Linux' and platform_machine == 'x86_64') or "
    "(platform_system == 'Windows' and platform_machine == 'AMD64')"
)
OTHERS = (
    "(platform_system != 'Linux' or platform_machine != 'x86_64') and "
    "(platform_system != 'Windows' or platform_machine != 'AMD64')"
)
if TENSORFLOW:
    TENSORFLOW_REQUIREMENTS = [f"{TENSORFLOW}>=2.16"]
else:
    TENSORFLOW_REQUIREMENTS = [f"tensorflow-cpu>=2.16; {CPU_WHEELS}", f"tensorflow>=2.16; {OTHERS}"]

setup(
    name="advlib",
    version=VERSION,
    description="Adversarial robustness for TensorFlow/Keras models: attacks, "
    "adversarial training, quantized networks and a benchmark harness.",
    long_description=README,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["advlib", "advlib.*"]),
    include_package_data=True,
    package_data={"advlib": ["**/*.cu", "**/*.json"]},
    install_requires=TENSORFLOW_REQUIREMENTS
    + [
        "keras>=3.14.0",
        "numpy>=2.0",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "gpu": ["cupy-cuda12x>=13", "nvidia-cuda-nvrtc-cu12"],
        # Keras's other backends (KERAS_BACKEND=jax or torch); torch from 2.6, whose
        # torch.load defaults to weights_only (CVE-2025-32434)
        "jax": ["jax>=0.5"],
        "torch": ["torch>=2.6"],
        # the verifier's SAT backend (PySAT publishes only .dev versions)
        "verify": ["python-sat>=1.8.dev16"],
        # the harness's --ray engine; 2.43 keeps tokens out of the logs (CVE-2025-1979)
        "ray": ["ray>=2.43"],
        # NVRTC compiles the CUDA kernels in CI, where there is no GPU
        # the tests, lint, types and the documentation site; the linters are pinned so
        # that a new release cannot fail CI on code nobody changed
        "dev": [
            "pytest>=7",
            # the backend matrix: JAX, and PyTorch's CPU build where there is one (the
            # default wheel brings gigabytes of CUDA libraries that tests never use)
            "jax>=0.5",
            f"torch==2.13.0+cpu; {CPU_WHEELS}",
            f"torch>=2.6; {OTHERS}",
            "pytest-xdist>=3.2",  # --dist worksteal
            "hypothesis>=6",
            "python-sat>=1.8.dev16",
            "ray>=2.43",
            "nvidia-cuda-nvrtc-cu12; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "ruff==0.17.6",
            "mypy==2.4.1",
            "mkdocs>=1.6.1,<2",
            "mkdocs-material>=9.5,<10",
            "mkdocstrings[python]>=1.0,<2",
            "mkdocstrings-python>=2.0.11,<3",
            "playwright>=1.45",
        ],
    },
    entry_points={"console_scripts": ["advlib=advlib.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
