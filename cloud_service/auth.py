"""Bearer-token authentication and scopes for the cloud API's routes.

Every route but ``/healthz`` names the scopes it accepts with :func:`require_scope`; the
token comes from ``Authorization: Bearer ec_<id>.<secret>`` and is checked against the
app's :class:`~edgecascade.cloud_service.tokens.TokenStore` before the view runs, so a request without
a valid token is refused before its body is read. A missing, unknown, wrong, expired,
used or revoked token raises :class:`~edgecascade.device_sdk.errors.AuthError` (HTTP 401); a valid
token outside the route's scopes raises :class:`~edgecascade.device_sdk.errors.ScopeError` (HTTP 403).

Routes and scopes: ``POST /v1/infer`` gateway or device; ``GET /v1/metrics`` admin;
``POST /v1/devices/enroll`` a one-time enrolment token; ``POST /v1/hard-examples``
device (its own examples only) or gateway; listing and labelling hard examples, ``POST
/v1/retrain`` and ``GET /v1/jobs[/<id>]`` admin; ``GET /healthz`` open; the model
registry's routes are listed in :mod:`edgecascade.cloud_service.models_api`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request

from edgecascade.cloud_service.tokens import TokenInfo, TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import AuthError, ScopeError

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSION = "edgecascade.tokens"


def init_app(app: Flask, store: TokenStore) -> None:
    """Give ``app`` its token store."""
    app.extensions[_EXTENSION] = store


def token_store() -> TokenStore:
    """The token store of the app handling the current request."""
    return cast(TokenStore, current_app.extensions[_EXTENSION])


def bearer_token() -> str:
    """The bearer credential of the current request, or AuthError."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise AuthError("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return credential.strip()


def require_scope(*scopes: str) -> Callable[[F], F]:
    """Decorate a view so it runs only for a live token of one of ``scopes``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            info = token_store().authenticate(bearer_token())
            if info.scope not in scopes:
                raise ScopeError(
                    f"a {info.scope} token cannot use {request.path}; it needs {' or '.join(scopes)}"
                )
            g.edgecascade_token = info
            return view(*args, **kwargs)

        return cast(F, checked)

    return decorate


def current_token() -> TokenInfo:
    """The token that authenticated the current request (inside a :func:`require_scope` view)."""
    return cast(TokenInfo, g.edgecascade_token)


def check_device_identity(header: wire.Header, info: TokenInfo) -> None:
    """A device token may only speak for its own device: the envelope's device id must be its name."""
    if info.scope != "device":
        return
    device_id = header.device_id
    if device_id != info.name:
        raise ScopeError(f"the token of device {info.name!r} cannot send requests as {device_id!r}")
