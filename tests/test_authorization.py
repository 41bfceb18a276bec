"""Every handler asks the server's authorizer about the "aigrid" resource."""

from __future__ import annotations

import json

import pytest
from jupyter_server.auth.authorizer import Authorizer
from test_errors_and_auth import concrete
from tornado.httpclient import HTTPClientError

from jupyter_aigrid.server.handlers import ROUTES


class DenyAIGrid(Authorizer):
    """A valid token, but no permission on the aigrid resource."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return resource != "aigrid"


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["authorizer_class"] = DenyAIGrid
    return jp_server_config


@pytest.mark.parametrize(
    ("route", "method"),
    [
        (route, verb.upper())
        for route, handler in ROUTES
        for verb in ("get", "post", "put", "patch", "delete")
        if verb in vars(handler)
    ],
)
async def test_authorizer_is_asked_on_every_route(jp_fetch, aigrid_master, route, method):
    parts = concrete(route).split("/")
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(
            *parts,
            method=method,
            body=json.dumps({"code": "pass"}) if method == "POST" else None,
            allow_nonstandard_methods=True,
        )
    assert info.value.code == 403
    # The same token may do what the authorizer allows.
    assert (await jp_fetch("api", "status")).code == 200
