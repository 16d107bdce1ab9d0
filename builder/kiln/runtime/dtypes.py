"""Spec dtypes as numpy types, shared by the builder and the server."""

from __future__ import annotations

import numpy as np

from kiln.api.spec import DType

NUMPY_DTYPES: dict[DType, type[np.generic]] = {
    DType.FLOAT32: np.float32,
    DType.FLOAT16: np.float16,
    DType.INT64: np.int64,
    DType.INT32: np.int32,
    DType.UINT8: np.uint8,
    DType.BOOL: np.bool_,
}
