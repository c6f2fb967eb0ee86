"""physgen: physics-focused generative surrogates.

Read real data (:mod:`physgen.io`) into common tensors (:mod:`physgen.data`),
train interchangeable surrogates (:mod:`physgen.surrogates`) and judge them with
physics-aware metrics (:mod:`physgen.metrics`).
"""

from __future__ import annotations

from physgen.data import Data, Schema
from physgen.errors import PhysgenError
from physgen.io import load_default, read, write

__version__ = "0.1.0"

__all__ = ["Data", "Schema", "load_default", "read", "write", "PhysgenError", "__version__"]
