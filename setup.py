"""scipion-em-simcryo: Scipion plugin + PyTorch engine for unsupervised cryo-EM 2D
classification (SimCryoCluster).

torch is deliberately NOT in install_requires: install the build that matches your machine
first (CPU: `pip install torch==2.13.0`; GPU: the CUDA build for your driver), so that pip
never replaces it with a multi-GB download. `simcryo` checks for it at run time.
"""
import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.md"), encoding="utf-8") as fh:
    long_description = fh.read()

setup(
    name="scipion-em-simcryo",
    version="0.1.0",
    description="Unsupervised 2D classification of cryo-EM particles (SimCryoCluster) "
                "as a Scipion plugin with a standalone PyTorch engine",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="GPLv3",
    python_requires=">=3.8",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]),
    package_data={"scipion_simcryo": ["protocols.conf", "*.png", "*.gif"]},
    include_package_data=True,
    install_requires=[
        "numpy>=1.21",
        "scipy>=1.7",
        "mrcfile>=1.4",
    ],
    extras_require={
        "scipion": ["scipion-em>=3.0"],
        "test": ["pytest", "scikit-learn"],
    },
    entry_points={
        "console_scripts": ["simcryo = simcryo.cli:main"],
        "pyworkflow.plugin": ["scipion_simcryo = scipion_simcryo"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
)
