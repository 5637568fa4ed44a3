from setuptools import find_packages, setup

# `kernels/` is installed as the subpackage mlla_mm.kernels: PyPI already has an unrelated package called `kernels`.
PACKAGE_DIR = {'mlla_mm': 'mlla_mm', 'mlla_mm.kernels': 'kernels'}
PACKAGES = (['mlla_mm'] + [f'mlla_mm.{p}' for p in find_packages('mlla_mm')]
            + ['mlla_mm.kernels'] + [f'mlla_mm.kernels.{p}' for p in find_packages('kernels')])

setup(
    name='mlla_mm',
    version='0.1.0',
    description='MLLA and vision-Mamba backbones with Triton kernels for MMDetection and MMSegmentation',
    python_requires='>=3.10',
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    install_requires=['torch', 'timm'],  # the pinned stack is installed by tools/setup_env.sh
)
