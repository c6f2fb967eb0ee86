"""physgen: physics-focused generative surrogates.

Read real data (:mod:`physgen.io`) into common tensors (:mod:`physgen.data`),
train interchangeable surrogates (:mod:`physgen.surrogates`) and judge them with
physics-aware metrics (:mod:`physgen.metrics`).
"""

from __future__ import annotations

import logging

from physgen.data import Data, Schema
from physgen.errors import PhysgenError
from physgen.io import load_default, read, write

__version__ = "0.1.0"

# messages go through logging ("physgen.*" loggers); an application or the CLI decides what to show
logging.getLogger("physgen").addHandler(logging.NullHandler())

__all__ = ["Data", "Schema", "load_default", "read", "write", "PhysgenError", "__version__"]
