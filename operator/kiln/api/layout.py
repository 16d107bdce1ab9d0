"""File names shared by the builder (writer), the server and the operator (readers)."""

from __future__ import annotations

STATUS_FILE = "status.json"  # `kiln optimize --output DIR`: the status block
MODEL_DOCUMENT = "model.json"  # the OptimizedModel (metadata + spec) a result was built from
RESULT_FILE = "result.json"  # one target's TargetStatus, under its result cache key
