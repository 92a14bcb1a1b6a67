"""One error style for every door of the service: ``{"error": <one line>, "details": [...]}``.

The ingress set the shape (CONTRACT.md, "Event ingress"): a one-line ``error`` and, when fields
are at fault, ``details`` with one ``{"field", "message", "type"}`` per problem. The settings
APIs of every plugin answer the same way, so an admin tool reads one shape whichever door it
knocked on, and a request with several faults gets them all in one answer instead of one per
attempt. Messages never carry the input: a field may hold a secret.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from .ids import id_problem

#: One problem: ``field`` (dotted; "" for the body itself), ``message`` (what to do), ``type``
#: (a stable word for programs: pydantic's error type, or the plugin's, e.g. ``rejected``),
#: and whatever else helps fix it (e.g. the account's ``teams``).
Detail = dict[str, Any]

M = TypeVar("M", bound=BaseModel)


def problem(field: str, message: str, type: str = "value_error", **extra: Any) -> Detail:
    """A detail built by hand, for checks pydantic does not make (stored state, the helpdesk)."""
    return {"field": field, "message": message, "type": type, **extra}


def field_errors(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[Detail]:
    """pydantic's errors as details; a validator's own wording is kept without pydantic's
    "Value error, " prefix, and an unknown field is told the allowed ones (given ``model``)."""
    allowed = f"unknown field; allowed: {', '.join(model.model_fields)}" if model else "unknown field"
    return [
        problem(".".join(str(part) for part in (prefix, *err["loc"]) if part != ""),
                allowed if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "),
                err["type"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


def not_an_object(example: str) -> Detail:
    return problem("", f"the body must be a JSON object such as {example}", "object_type")


def validate_fields(model: type[M], data: Any, example: str) -> tuple[M, list[Detail]]:
    """``data`` as ``model`` from its valid fields only, and a detail for each invalid one.

    A settings change is judged against what is stored (is a required field still missing?);
    keeping the valid part lets those checks run, and be reported, in the same answer as the
    body's own faults. Fields are validated on their own, so dropping the bad ones leaves a
    valid model; should a model-wide rule still fail, or ``data`` not be an object (the detail
    then shows ``example``), the model's defaults stand in.
    """
    if not isinstance(data, Mapping):
        return model.model_construct(), [not_an_object(example)]
    details: list[Detail] = []
    remaining = dict(data)
    while True:
        try:
            return model.model_validate(remaining), details
        except ValidationError as exc:
            details += field_errors(exc, model=model)
            bad = {err["loc"][0] for err in exc.errors(include_url=False, include_input=False) if err["loc"]}
            if not bad & remaining.keys():
                return model.model_construct(), details
            remaining = {k: v for k, v in remaining.items() if k not in bad}


def validated(model: type[M], data: Any, example: str, error: type[RequestError] | None = None) -> M:
    """``data`` as ``model``, or ``error`` (a RequestError class) naming every invalid field."""
    changes, details = validate_fields(model, data, example)
    if details:
        raise (error or RequestError)(details=details)
    return changes


def check_settings(model: type[M], store_id: str, body: M | Mapping[str, Any], example: str,
                   error: type[RequestError] | None = None) -> tuple[M, list[Detail]]:
    """The checks of a settings change that need no stored state: the body's fields (unless
    ``body`` is a model already, as a CLI builds it) and the store id of the path.

    A wrong store id is raised at once, as ``error``, with the body's faults: it names the
    Redis keys, so no stored state can be judged under it. Otherwise the body's valid part and
    its faults come back, for the caller to add what the stored settings lack and raise them
    all in one answer before it asks its helpdesk anything.
    """
    changes, problems = (body, []) if isinstance(body, model) else validate_fields(model, body, example)
    if wrong_id := id_problem("store_id", store_id):
        raise (error or RequestError)(details=[problem("store_id", wrong_id, "string_pattern_mismatch"), *problems])
    return changes, problems


def _line(detail: Detail) -> str:
    field, message = detail["field"], detail["message"]
    return message if not field or message.startswith(field) else f"{field}: {message}"


def summarize(details: list[Detail]) -> str:
    """The one-line ``error`` for ``details``: the problem itself when there is one, else
    the fields at fault (each one's fix is in its detail)."""
    fields = list(dict.fromkeys(d["field"] or "body" for d in details))
    if len(fields) == 1:
        return "; ".join(map(_line, details))
    return f"{len(fields)} fields need fixing: {', '.join(fields)} (details says what each needs)"


def error_response(status: int, message: str, details: list[Detail] | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The answer for a refusal; ``details`` appears when fields are at fault, as at the ingress."""
    payload: dict[str, Any] = {"error": message}
    if details:
        payload["details"] = details
    return JSONResponse(payload, status_code=status, headers=dict(headers) if headers else None)


class RequestError(Exception):
    """A request refused, with everything its answer needs.

    ``status``: 422 for anything the sender can fix in the request (the default), 400/413 for
    a body that cannot be read, 404/409/502/503 for the rest. ``message`` is every problem on
    one line, for a reader without ``details`` (the CLI, a log); the HTTP answer's ``error`` is
    ``summary``, which is the same unless several fields are at fault. ``retry_after`` (seconds)
    becomes the ``Retry-After`` header.
    """

    def __init__(self, message: str | None = None, details: list[Detail] | None = None, *,
                 status: int = 422, retry_after: float | None = None) -> None:
        self.details = list(details or [])
        self.message = message or "; ".join(map(_line, self.details)) or "the request is invalid"
        self.status, self.retry_after, self._worded = status, retry_after, message is not None
        super().__init__(self.message)

    @property
    def summary(self) -> str:
        return summarize(self.details) if len(self.details) > 1 and not self._worded else self.message

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(self.retry_after)))} if self.retry_after else None
        return error_response(self.status, self.summary, self.details, headers)
