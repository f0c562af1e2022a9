"""bark-pipeline. ``from pipeline import Narrator`` is the Python API (:mod:`pipeline.narrator`).

The export is lazy, so ``import pipeline`` (and ``python -m pipeline``, which checks the
arguments and config before anything heavy loads) does not import torch or Ray.
"""

__all__ = ["NarrationResult", "Narrator"]


def __getattr__(name: str):
    if name in __all__:
        from pipeline import narrator

        return getattr(narrator, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
