"""The admin API (``/admin/keys``), managed keys at every front door, and the models a key may use.

A real gateway under hypercorn in the test's trio run; the clients are httpx, trio-websocket and
the official ``openai`` SDK.  Propagation across worker processes and instances is in
``tests/e2e/test_key_propagation.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from hashlib import sha256
from typing import Any

import h11
import httpx
import pytest
import trio
from openai import NotFoundError, OpenAI
from trio_websocket import open_websocket_url

from streamgw.config import (
    Config,
    ControlConfig,
    DemoSettings,
    KeyPolicy,
    ProviderConfig,
    RouteConfig,
    Secret,
    StaticKey,
)
from streamgw.testing.harness import RawClient, running_gateway
from streamgw.testing.redis_server import redis_process, require_redis

from .test_websocket import rejected_upgrade

ADMIN = "sk-admin-for-tests-0123"
STATIC = "sk-static-for-tests-0123"
RESTRICTED = "sk-restricted-for-tests-0123"
FAST = DemoSettings(first_token_delay=0.0, tokens_per_second=5000)


def config(*, admin: bool = True, control: ControlConfig | None = None) -> Config:
    restricted = KeyPolicy(name="restricted", tenant="t:r", models=("demo/*",))
    return Config(
        auth_keys=(Secret(STATIC),),
        keys=(StaticKey(restricted, sha256(RESTRICTED.encode()).digest(), Secret(RESTRICTED)),),
        providers={
            "demo": ProviderConfig(name="demo", type="demo", demo=FAST),
            "other": ProviderConfig(name="other", type="demo", demo=FAST, models=("bare-model",)),
        },
        routes={"fast": RouteConfig(name="fast", targets=("demo/a", "other/b"))},
        control=control or ControlConfig(backend="memory"),
        admin_key=Secret(ADMIN) if admin else None,
    )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


ADMIN_AUTH = bearer(ADMIN)


@asynccontextmanager
async def gateway(cfg: Config | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(cfg or config()) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await client.post("/admin/keys", json=body, headers=ADMIN_AUTH)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def respond(client: httpx.AsyncClient, key: str, model: str = "demo/x", stream: bool = False) -> httpx.Response:
    return await client.post("/v1/responses", json={"model": model, "input": "hi", "stream": stream},
                             headers=bearer(key))


# --- who may use the admin API --------------------------------------------------------------------------------


async def test_without_an_admin_key_the_admin_api_does_not_exist() -> None:
    async with gateway(config(admin=False)) as client:
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/keys/key_1"),
                             ("DELETE", "/admin/keys/key_1"), ("PATCH", "/admin/keys/key_1")):
            answer = await client.request(method, path, headers=ADMIN_AUTH, json={"name": "x"})
            unknown = await client.request(method, path.replace("admin", "nowhere"), headers=ADMIN_AUTH,
                                           json={"name": "x"})
            assert answer.status_code == unknown.status_code == 404, (method, path)
            assert answer.content == unknown.content.replace(b"/nowhere/", b"/admin/")


async def test_only_the_admin_key_opens_the_admin_api() -> None:
    async with gateway() as client:
        for headers in ({}, bearer("sk-wrong"), bearer(STATIC), bearer(RESTRICTED), {"authorization": ADMIN},
                        {"authorization": f"Basic {ADMIN}"}, bearer(ADMIN + "x"), bearer(ADMIN[:-1])):
            for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/keys/key_1")):
                answer = await client.request(method, path, headers=headers, json={"name": "x"})
                assert answer.status_code == 401, (headers, method, path)
                assert answer.json()["error"]["type"] == "authentication_error"
                assert answer.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/admin/keys", headers=ADMIN_AUTH)).status_code == 200
        # and the admin key is no gateway key
        assert (await client.get("/v1/models", headers=ADMIN_AUTH)).status_code == 401
        assert (await client.get("/admin/keys", headers=ADMIN_AUTH)).json()["data"] == []


async def test_with_only_an_admin_key_the_gateway_requires_a_key() -> None:
    cfg = Config(providers={"demo": ProviderConfig(name="demo", type="demo", demo=FAST)},
                 control=ControlConfig(backend="memory"), admin_key=Secret(ADMIN))
    async with gateway(cfg) as client:
        assert (await client.get("/v1/models")).status_code == 401
        assert (await respond(client, "anything")).status_code == 401
        secret = (await create(client, name="only"))["secret"]
        assert (await respond(client, secret)).status_code == 200


# --- the life of a managed key -------------------------------------------------------------------------------


async def test_a_managed_key_is_shown_once_and_works_until_disabled_expired_or_deleted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with gateway() as client:
        unknown = await respond(client, "sk-sgw-" + "n" * 43)
        assert unknown.status_code == 401
        created = await create(client, name="ci-bot", tenant="team-a", requests_per_minute=60,
                               model_limits={"demo/*": {"concurrent_streams": 2}}, expires="2099-01-01T00:00:00Z")
        secret, key_id = created["secret"], created["id"]
        assert secret.startswith("sk-sgw-") and len(secret) == 50 and key_id.startswith("key_")
        assert created["redacted"] == f"sk-sgw-...{secret[-4:]}" and created["source"] == "managed"
        assert created["tenant"] == "team-a" and created["requests_per_minute"] == 60
        assert created["model_limits"]["demo/*"]["concurrent_streams"] == 2 and created["expires"] == 4070908800

        answer = await respond(client, secret)
        assert answer.status_code == 200 and answer.json()["status"] == "completed"
        assert (await client.get("/v1/models", headers=bearer(secret))).status_code == 200

        listed = await client.get("/admin/keys", headers=ADMIN_AUTH)
        one = await client.get(f"/admin/keys/{key_id}", headers=ADMIN_AUTH)
        digest = sha256(secret.encode()).hexdigest()
        for shown in (listed.text, one.text):
            assert secret not in shown and secret[7:] not in shown and digest not in shown
        assert listed.json()["data"] == [one.json()] and "secret" not in one.json()

        patched = await client.patch(f"/admin/keys/{key_id}", json={"disabled": True}, headers=ADMIN_AUTH)
        assert patched.status_code == 200 and patched.json()["disabled"] is True
        refused = await respond(client, secret)
        assert refused.status_code == 401 and refused.content == unknown.content  # the same 401 as ever
        assert (await client.get("/v1/models", headers=bearer(secret))).status_code == 401

        await client.patch(f"/admin/keys/{key_id}", json={"disabled": False}, headers=ADMIN_AUTH)
        assert (await respond(client, secret)).status_code == 200
        await client.patch(f"/admin/keys/{key_id}", json={"expires": 1000}, headers=ADMIN_AUTH)
        assert (await respond(client, secret)).content == unknown.content
        await client.patch(f"/admin/keys/{key_id}", json={"expires": None}, headers=ADMIN_AUTH)
        assert (await respond(client, secret)).status_code == 200

        deleted = await client.delete(f"/admin/keys/{key_id}", headers=ADMIN_AUTH)
        assert deleted.status_code == 200 and deleted.json() == {"object": "gateway.key.deleted", "id": key_id,
                                                                 "name": "ci-bot", "deleted": True}
        assert (await respond(client, secret)).content == unknown.content
        for method in ("GET", "PATCH", "DELETE"):
            gone = await client.request(method, f"/admin/keys/{key_id}", headers=ADMIN_AUTH, json={})
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "key_not_found"
    assert secret not in caplog.text and secret[7:] not in caplog.text
    assert "created key 'ci-bot'" in caplog.text


async def test_stored_responses_belong_to_the_managed_key_tenant() -> None:
    async with gateway() as client:
        one = (await create(client, name="one", tenant="team-a"))["secret"]
        two = (await create(client, name="two", tenant="team-a"))["secret"]
        alone = (await create(client, name="alone"))["secret"]
        stored = (await respond(client, one)).json()["id"]
        assert (await client.get(f"/v1/responses/{stored}", headers=bearer(two))).status_code == 200
        assert (await client.get(f"/v1/responses/{stored}", headers=bearer(alone))).status_code == 404
        key_id = (await client.get("/admin/keys", headers=ADMIN_AUTH)).json()["data"][0]["id"]
        moved = await client.patch(f"/admin/keys/{key_id}", json={"tenant": "team-b"}, headers=ADMIN_AUTH)
        assert moved.status_code == 400 and moved.json()["error"]["param"] == "tenant"


async def test_listing_pages_in_creation_order_and_shows_config_keys() -> None:
    async with gateway() as client:
        names = [f"k{i}" for i in range(5)]
        for name in names:
            await create(client, name=name)
        first = (await client.get("/admin/keys?limit=2", headers=ADMIN_AUTH)).json()
        assert [k["name"] for k in first["data"]] == ["k0", "k1"] and first["has_more"] is True
        rest = (await client.get(f"/admin/keys?limit=10&after={first['last_id']}", headers=ADMIN_AUTH)).json()
        assert [k["name"] for k in rest["data"]] == ["k2", "k3", "k4"] and rest["has_more"] is False
        static = (await client.get("/admin/keys?source=config", headers=ADMIN_AUTH)).json()["data"]
        assert {k["name"] for k in static} == {"auth-1", "restricted"}
        assert all(k["source"] == "config" and k["redacted"] is None for k in static)
        assert STATIC not in json.dumps(static) and RESTRICTED not in json.dumps(static)


async def test_names_are_unique_across_managed_and_config_keys() -> None:
    async with gateway() as client:
        await create(client, name="dup")
        for name in ("dup", "restricted", "auth-1"):
            taken = await client.post("/admin/keys", json={"name": name}, headers=ADMIN_AUTH)
            assert taken.status_code == 409, name
            assert taken.json()["error"] | {"message": ""} == {"type": "invalid_request_error", "param": "name",
                                                               "code": "key_name_taken", "message": ""}


@pytest.mark.parametrize(("method", "body", "param"), [
    ("POST", {"name": "a b"}, "name"),
    ("POST", {"tenant": "x"}, "name"),
    ("POST", {"name": "a", "requests_per_minute": -1}, "requests_per_minute"),
    ("POST", {"name": "a", "tokens_per_minute": "5"}, "tokens_per_minute"),
    ("POST", {"name": "a", "concurrent_streams": 1.5}, "concurrent_streams"),
    ("POST", {"name": "a", "cost_per_month": -1}, "cost_per_month"),
    ("POST", {"name": "a", "models": ["x\u0000"]}, "models[0]"),
    ("POST", {"name": "a", "model_limits": {"d/*": {"tokens_per_day": -5}}}, "model_limits.d/*.tokens_per_day"),
    ("POST", {"name": "a", "expires": "2030-01-01"}, "expires"),
    ("POST", {"name": "a", "disabled": 1}, "disabled"),
    ("POST", {"name": "a", "tenant": "no spaces"}, "tenant"),
    ("POST", {"name": "a", "rpm": 5}, "rpm"),
    ("PATCH", {"name": "renamed"}, "name"),
    ("PATCH", {"tenant": "other"}, "tenant"),
    ("PATCH", {"tokens_per_month": -3}, "tokens_per_month"),
    ("PATCH", {"id": "key_x"}, "id"),
])
async def test_each_bad_field_is_a_400_naming_it(method: str, body: dict[str, Any], param: str) -> None:
    async with gateway() as client:
        path = "/admin/keys"
        if method == "PATCH":
            path += "/" + (await create(client, name="target"))["id"]
        answer = await client.request(method, path, json=body, headers=ADMIN_AUTH)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
        assert (await client.get("/admin/keys", headers=ADMIN_AUTH)).json()["data"] == (
            [] if method == "POST" else [(await client.get(path, headers=ADMIN_AUTH)).json()])


async def test_bad_bodies_and_queries() -> None:
    async with gateway() as client:
        for content, status, code in ((b"{", 400, "invalid_json"), (b"[]", 400, "invalid_json"),
                                      (b'{"name": "' + b"x" * 70_000 + b'"}', 413, "request_too_large")):
            answer = await client.post("/admin/keys", content=content, headers=ADMIN_AUTH)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)

        raw = await RawClient.connect(client.base_url.port or 0)  # chunked, no content-length: refused at 64 KiB
        try:
            head = [("host", "gw"), ("transfer-encoding", "chunked"), *ADMIN_AUTH.items()]
            await raw.stream.send_all(raw.conn.send(h11.Request(method="POST", target="/admin/keys", headers=head)))
            with trio.move_on_after(5):
                for _ in range(100):
                    try:
                        await raw.stream.send_all(raw.conn.send(h11.Data(data=b" " * 1024)))
                    except trio.BrokenResourceError:
                        break  # it answered and closed before reading the rest
            assert (await raw.response_head()).status_code == 413
        finally:
            await raw.aclose()
        for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                             ("after=nope", "after"), ("source=all", "source"), ("page=2", "page")):
            answer = await client.get(f"/admin/keys?{query}", headers=ADMIN_AUTH)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, query


# --- the models a key may use -------------------------------------------------------------------------------


async def test_a_model_outside_the_key_is_a_404_like_a_model_that_does_not_exist() -> None:
    async with gateway() as client:
        managed = (await create(client, name="narrow", models=["demo/*", "bare-model"]))["secret"]
        for key in (RESTRICTED, managed):  # a [keys.NAME] table's models and a managed key's alike
            assert (await respond(client, key, "demo/anything")).status_code == 200
            for stream in (False, True):
                nowhere = await respond(client, key, "nowhere/x", stream)
                assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "model_not_found"
                for outside in ("other/x", "fast", "other/bare-model"):
                    refused = await respond(client, key, outside, stream)
                    assert refused.status_code == 404
                    assert refused.content == nowhere.content.replace(b"nowhere/x", outside.encode()), outside
            hinted = await client.post("/v1/responses", json={"model": "x", "provider": "other", "input": "hi"},
                                       headers=bearer(key))
            assert hinted.content == (await respond(client, key, "x")).content  # a hint is no way around it
        assert (await respond(client, managed, "bare-model")).status_code == 200  # named by its bare name
        assert (await respond(client, RESTRICTED, "bare-model")).status_code == 404
        # a key without patterns may use everything, and an unknown model says what there is
        assert (await respond(client, STATIC, "fast")).status_code == 200
        assert b"routes: fast" in (await respond(client, STATIC, "nowhere/x")).content


async def test_models_lists_only_what_the_key_may_use() -> None:
    async with gateway() as client:
        managed = (await create(client, name="narrow", models=["fast", "bare-model"]))["secret"]

        async def listed(key: str) -> list[str]:
            answer = await client.get("/v1/models", headers=bearer(key))
            return [m["id"] for m in answer.json()["data"]]

        assert await listed(STATIC) == ["demo/demo", "other/demo", "other/bare-model", "fast"]
        assert await listed(RESTRICTED) == ["demo/demo"]
        assert await listed(managed) == ["other/bare-model", "fast"]
        assert (await client.get("/v1/models/fast", headers=bearer(managed))).status_code == 200
        outside = await client.get("/v1/models/demo/demo", headers=bearer(managed))
        missing = await client.get("/v1/models/no/such", headers=bearer(managed))
        assert outside.status_code == missing.status_code == 404
        assert outside.content == missing.content.replace(b"no/such", b"demo/demo")


async def test_websocket_mode_refuses_a_model_outside_the_key_and_a_key_disabled_meanwhile() -> None:
    async with gateway() as client:
        managed = (await create(client, name="narrow", models=["demo/*"]))["secret"]
        port = client.base_url.port
        headers = [("authorization", f"Bearer {managed}")]
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/responses", extra_headers=headers) as ws:
            frames = []
            for model in ("nowhere/x", "other/x"):
                await ws.send_message(json.dumps({"type": "response.create", "model": model, "input": "hi"}))
                frames.append(json.loads(await ws.get_message()))
            assert frames[0]["status"] == 404 and frames[0]["error"]["code"] == "model_not_found"
            assert json.dumps(frames[1]) == json.dumps(frames[0]).replace("nowhere/x", "other/x")
            await ws.send_message(json.dumps({"type": "response.create", "model": "demo/x", "input": "hi"}))
            while (event := json.loads(await ws.get_message()))["type"] != "response.completed":
                assert event["type"] != "error"
            # disabled while the connection is open: its next response.create is refused
            key_id = (await client.get("/admin/keys", headers=ADMIN_AUTH)).json()["data"][0]["id"]
            await client.patch(f"/admin/keys/{key_id}", json={"disabled": True}, headers=ADMIN_AUTH)
            await ws.send_message(json.dumps({"type": "response.create", "model": "demo/x", "input": "hi"}))
            refused = json.loads(await ws.get_message())
            assert refused["type"] == "error" and refused["status"] == 401
            assert refused["error"]["type"] == "authentication_error"
        status, _, body = await rejected_upgrade(port or 0, "sk-sgw-" + "w" * 43)  # an unknown managed-form key
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


# --- clients and outages ----------------------------------------------------------------------------------------


async def test_the_openai_sdk_works_with_a_managed_key() -> None:
    async with gateway() as client:
        secret = (await create(client, name="sdk", models=["demo/*"]))["secret"]
        base = f"http://127.0.0.1:{client.base_url.port}/v1"

        def use() -> tuple[str, list[str], int]:
            with OpenAI(base_url=base, api_key=secret, max_retries=0) as sdk:
                text = sdk.responses.create(model="demo/x", input="Say hello").output_text
                models = [m.id for m in sdk.models.list()]
                try:
                    sdk.responses.create(model="other/x", input="hi")
                except NotFoundError as exc:
                    return text, models, exc.status_code
                return text, models, 200

        text, models, outside = await trio.to_thread.run_sync(use)
        assert text and models == ["demo/demo"] and outside == 404


async def test_while_the_key_store_is_down_cached_keys_work_and_uncached_ones_get_503() -> None:
    require_redis()
    with redis_process() as (url, proc):
        cfg = config(control=ControlConfig(backend="redis", url=url, key_prefix="down:", timeout=0.3))
        async with gateway(cfg) as client:
            cached = (await create(client, name="cached"))["secret"]
            uncached = (await create(client, name="uncached"))["secret"]
            assert (await respond(client, cached)).status_code == 200
            proc.send_signal(19)  # SIGSTOP: the key store hangs
            try:
                started = trio.current_time()
                down = await respond(client, uncached)
                assert trio.current_time() - started < 2.0  # never a hang: [control] timeout
                assert down.status_code == 503 and down.headers["retry-after"] == "1"
                assert down.json()["error"]["code"] == "control_unavailable"
                assert (await respond(client, cached)).status_code == 200
                assert (await respond(client, STATIC)).status_code == 200
                assert (await respond(client, "sk-not-a-managed-key")).status_code == 401  # never looked up
                listing = await client.get("/admin/keys", headers=ADMIN_AUTH)
                assert listing.status_code == 503
            finally:
                proc.send_signal(18)  # SIGCONT
            assert (await respond(client, uncached)).status_code == 200
