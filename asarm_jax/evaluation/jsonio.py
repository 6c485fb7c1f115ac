"""JSON files of the evaluation: strict values and plain-or-gzipped text."""
from __future__ import annotations

import gzip
import math
from typing import Any, TextIO


def strict(value: Any) -> Any:
  """``value`` with NaN and infinities as ``None`` (strict JSON), through dicts and lists."""
  if isinstance(value, dict):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def open_text(path: str) -> TextIO:
  """``path`` opened for reading text (UTF-8), gunzipped if it ends in ``.gz``."""
  return (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8")
