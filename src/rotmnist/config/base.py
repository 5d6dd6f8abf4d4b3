"""What every section of `params.yaml` shares: strict frozen models, and the value types built from `spec`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from rotmnist.spec import CONFIGURATIONS, DEVICES, FAMILIES, PRECISIONS, SCHEDULES

# Literal types built from the one spelling in `spec`, so pydantic's error lists the allowed values.
Family = Literal[FAMILIES]  # type: ignore[valid-type]
Schedule = Literal[SCHEDULES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
Configuration = Literal[CONFIGURATIONS]  # type: ignore[valid-type]


def as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _check_sha256(v: str) -> str:
    if v and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
        raise ValueError("must be a SHA-256 hex digest of 64 characters")
    return v.lower()


# A YAML list read as a tuple (frozen config); a SHA-256 hex digest ("" where the source allows none).
Ints = Annotated[tuple[int, ...], BeforeValidator(as_tuple)]
Floats2 = Annotated[tuple[float, float], BeforeValidator(as_tuple)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]


class Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default);
    # no type coercion beyond int -> float, so "3" is not accepted for an int.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
