"""The one base of every AI Grid REST handler: auth resource, identity, and error mapping."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import Conflict, NotFound
from ..master import Master
from ..spec import SpecError

AUTH_RESOURCE = "aigrid"
#: Identity providers of a single-user server: whoever holds its token is its owner.
_SINGLE_USER = (IdentityProvider, PasswordIdentityProvider)


class AIGridHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def master(self) -> Master:
        return self.settings["aigrid_master"]

    @property
    def owner(self) -> str:
        """Who is asking. On a single-user server every token holder is the server's user."""
        if type(self.identity_provider) in _SINGLE_USER:
            return getpass.getuser()
        return self.current_user.username

    @property
    def is_admin(self) -> bool:
        if type(self.identity_provider) in _SINGLE_USER:
            return True
        return self.owner in self.settings.get("aigrid_admin_users", set())

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def _handle_request_exception(self, e: BaseException) -> None:
        status = {SpecError: None, NotFound: 404, Conflict: 409}
        for cls, code in status.items():
            if isinstance(e, cls):
                if self._finished:
                    return
                self.log.debug("AI Grid request refused: %s", e)
                self.send_error(code or getattr(e, "status", 400), exc_info=sys.exc_info())
                return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (SpecError, NotFound, Conflict)):
            body = {
                "message": getattr(exc, "message", str(exc)),
                "field": getattr(exc, "field", None),
            }
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(body))
            return
        if isinstance(exc, web.HTTPError):
            body = {
                "message": exc.log_message or exc.reason or self._reason,
                "field": getattr(exc, "field", None),
            }
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(body))
            return
        super().write_error(status_code, **kwargs)


#: The largest integer SQLite (and a C ``ssize_t``) can hold.
INT64_MAX = 2**63 - 1


def query_int(
    handler: AIGridHandler, name: str, minimum: int = 0, maximum: int = INT64_MAX
) -> int | None:
    """An optional integer query argument in ``[minimum, maximum]``, or a 400 that names it."""
    raw = handler.get_query_argument(name, None)
    if raw in (None, ""):
        return None
    try:
        value = int(raw) if raw.isascii() else None
    except ValueError:  # not a number, or more digits than int() reads
        value = None
    if value is None or not minimum <= value <= maximum:
        shown = raw if len(raw) <= 32 else f"{raw[:27]}..."
        msg = (
            f"query argument {name!r} must be an integer from {minimum} to {maximum}, got {shown!r}"
        )
        raise SpecError(msg, field=name)
    return value


def query_bool(handler: AIGridHandler, name: str) -> bool:
    raw = (handler.get_query_argument(name, "") or "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    msg = f"query argument {name!r} must be one of 1, 0, true, false; got {raw!r}"
    raise SpecError(msg, field=name)
