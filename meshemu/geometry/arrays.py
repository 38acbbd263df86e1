"""Array types of the pure stages (``numpy.typing`` aliases, by element type).

Shapes are not part of numpy's static types; each function's docstring gives them.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

#: Real values: positions (km), distances, delays (s), rates (bit/s), angles.
FloatArray: TypeAlias = npt.NDArray[np.float64]
#: Node ids, link ends, next hops.
Int32Array: TypeAlias = npt.NDArray[np.int32]
#: Edge keys (``a * n_nodes + b``) and indices computed from them.
Int64Array: TypeAlias = npt.NDArray[np.int64]
#: Small codes (``Snapshot.kind``).
Int8Array: TypeAlias = npt.NDArray[np.int8]
#: Flags (``up``, ``transit``, masks).
BoolArray: TypeAlias = npt.NDArray[np.bool_]
#: Indices as numpy returns them (``np.nonzero``, ``np.argsort``).
IndexArray: TypeAlias = npt.NDArray[np.intp]
