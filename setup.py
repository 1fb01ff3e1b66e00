"""Builds ffrecord._core, the C++17 core, as a pybind11 extension.

Metadata lives in pyproject.toml; this file only describes the extension.
"""
import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

core = Pybind11Extension(
    "ffrecord._core",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    libraries=["zstd"],  # csrc/codec.*: decodes compressed records (libzstd-dev)
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-fvisibility=hidden"],
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext})
