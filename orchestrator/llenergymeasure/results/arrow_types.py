"""Arrow column types, from a pydantic field annotation or from the values (one mapping for
``results.parquet`` and the dataset export). ``pyarrow`` is imported on call."""

from __future__ import annotations

import types
import typing
from typing import Any

_SCALARS = (bool, int, float, str)


def arrow_type(annotation: Any) -> Any:
    """``bool``/``int``/``float`` (``X | None`` too) -> bool_/int64/float64; ``list[scalar]``
    -> list_ of it; anything else string."""
    import pyarrow as pa

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return arrow_type(args[0]) if len(args) == 1 else pa.string()
    if origin is list:
        inner = typing.get_args(annotation)[0]
        return pa.list_(arrow_type(inner)) if inner in _SCALARS else pa.string()
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    return pa.string()


def infer_arrow_type(values: list[Any], *, lists: bool = True) -> Any:
    """The narrowest type holding every non-None value (``None``: no value to tell by).

    Lists of values become list_ columns unless ``lists`` is off (then string).
    """
    import pyarrow as pa

    seen = [v for v in values if v is not None]
    if not seen:
        return None
    if all(isinstance(v, bool) for v in seen):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return pa.float64()
    if lists and all(isinstance(v, list) for v in seen):
        inner = infer_arrow_type([x for v in seen for x in v])
        return pa.list_(inner if inner is not None else pa.string())
    return pa.string()
