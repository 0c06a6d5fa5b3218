"""Builds the one compiled piece: the fused kernels (distnn/engine/fused_*.c), backprop among them.

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and the rules run as NumPy passes, with the same bits.
"""

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-add, so every product is rounded as NumPy rounds it
# (gcc contracts by default, and always on aarch64). Never -ffast-math: it reorders.
# -fno-math-errno: sqrt may become the vector instruction (its operands are never negative).
FUSED = Extension(
    "distnn.engine._fused",
    sources=[
        "distnn/engine/fused_updates.c",
        "distnn/engine/fused_sums.c",
        "distnn/engine/fused_layers.c",
        "distnn/engine/fused_backprop.c",
    ],
    depends=["distnn/engine/fused_layers.h"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c99"],
    optional=True,
)

setup(ext_modules=[FUSED])
