"""Error bodies and the response tables every route shares."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field


class Problem(BaseModel):
    """Every error: a message that says what was wrong and what to do."""

    detail: str = Field(description="what was wrong, and what to do about it")


class FieldError(BaseModel):
    loc: list[str | int] = Field(
        description="where in the request: path, query or body, then the field"
    )
    msg: str
    type: str


class ValidationProblem(Problem):
    """A request that failed validation (422)."""

    errors: list[FieldError] = Field(default_factory=list)


def _r(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


Responses = dict[int | str, dict[str, Any]]

UNAUTHORIZED: Responses = {401: _r(Problem, "missing or wrong bearer token")}
INVALID: Responses = {422: _r(ValidationProblem, "invalid request")}
UNAVAILABLE: Responses = {503: _r(Problem, "the registry's Redis is unreachable")}
NOT_FOUND: Responses = {404: _r(Problem, "no such pool or backend")}
CONFLICT: Responses = {409: _r(Problem, "the request conflicts with the current state")}

# Every /api/v1 route may answer these.
COMMON: Responses = {**UNAUTHORIZED, **INVALID, **UNAVAILABLE}


def _integral(value: Any) -> Any:
    """JSON has one number type: 7.0 is the integer 7 (JSON Schema agrees),
    7.5 is not. Strings and booleans stay refused (models are strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# For an integer in a strict model that also takes 7.0: put it after the
# Field with the bounds, so the bounds stay in the JSON schema.
INTEGRAL = BeforeValidator(_integral)
JsonInt = Annotated[int, INTEGRAL]
