"""The HTTP side: the app server API (provision users) and the admin API."""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from harness.reference import defects, strictjson, tokens
from harness.reference.common import ID_RE
from harness.reference.server import Service
from harness.reference.state import AppState
from harness.reference.tiers import LIMIT_FIELDS, OPTIONAL_FEATURES, TIERS, limits_dict

log = logging.getLogger("harness.reference.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 1024 * 1024  # larger request bodies get 413 `too_large`
_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
               429: "rate_limited"}  # any other 4xx from aiohttp is `bad_request`


class ApiError(Exception):
    """An HTTP error answer: status, wire code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return web.json_response({"error": {"code": err.code, "message": err.message}},
                                 status=err.status)
    except web.HTTPNotFound:
        return web.json_response(
            {"error": {"code": "not_found", "message": f"no route {_cut(request.path)}"}},
            status=404)
    except web.HTTPMethodNotAllowed:
        return web.json_response(
            {"error": {"code": "bad_request", "message": f"method {request.method} not allowed"}},
            status=405)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(
            {"error": {"code": "too_large",
                       "message": f"request body exceeds {MAX_BODY_BYTES} bytes"}}, status=413)
    except web.HTTPException as exc:  # aiohttp's own answer to a malformed request
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
        return web.json_response({"error": {"code": code, "message": _cut(exc.reason)}},
                                 status=exc.status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": {"code": "internal", "message": "internal error; see the service log"}},
            status=500)


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    """A client's value in an error message, cut short."""
    return _cut(repr(value), 40)


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read() if request.can_read_body else b""  # 413 above the cap
    if not raw:
        return {}
    try:
        body = strictjson.loads(raw)
    except strictjson.JsonInputError as err:
        raise _bad(f"request body is {err}") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _bytes(text: str) -> bytes:
    """Header or environment text as bytes; undecodable bytes were kept as surrogates."""
    return text.encode("utf-8", "surrogateescape")


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


def _finite(value: Any) -> float | None:
    """`value` as a finite float >= 0, or None when it is not one."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _num(body: dict[str, Any], key: str, *, allow_none: bool = True) -> float | None:
    value = body.get(key)
    if value is None and allow_none:
        return None
    number = _finite(value)
    if number is None:
        raise _bad(f"{key!r} must be a finite number >= 0, got {_shown(value)}")
    return number


def _features(value: Any) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("'features' must be an object like {\"recall\": true}")
    for name, flag in value.items():
        if name not in OPTIONAL_FEATURES:
            raise _bad(f"unknown feature {name!r}; known: {', '.join(OPTIONAL_FEATURES)}")
        if not isinstance(flag, bool):
            raise _bad(f"feature {name!r} must be true or false, got {_shown(flag)}")
    return dict(value)


def _limits(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("'limits' must be an object of TierLimits fields")
    for name, limit in value.items():
        if name not in LIMIT_FIELDS:
            raise _bad(f"unknown limit {_shown(name)}; known: {', '.join(LIMIT_FIELDS)}")
        if limit is not None and _finite(limit) is None:
            raise _bad(f"limit {name!r} must be a finite number >= 0 or null, "
                       f"got {_shown(limit)}")
    return dict(value)


def _tier(value: Any) -> str:
    if not isinstance(value, str) or value not in TIERS:
        raise _bad(f"unknown tier {_shown(value)}; known: {', '.join(TIERS)}")
    return value


def _webhook(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.startswith("http")):
        raise _bad(f"'webhook' must be an http(s) URL or null, got {_shown(value)}")
    return value


def build_app(service: Service, admin_token: str | None) -> web.Application:
    """The aiohttp application serving both APIs for `service`."""

    def admin_only(request: web.Request) -> None:
        if not admin_token:
            raise ApiError(503, "admin_disabled",
                           "set IM_REF_ADMIN_TOKEN in the service's environment")
        if not hmac.compare_digest(_bytes(_bearer(request)), _bytes(admin_token)):
            raise ApiError(401, "unauthorized", "missing or wrong admin token")

    def get_app(app_id: str) -> AppState:
        app = service.apps.get(app_id)
        if app is None:
            raise ApiError(404, "not_found", f"no app {app_id!r}")
        return app

    def describe(app: AppState) -> dict[str, Any]:
        limits = app.limits(service.config.recall_window)
        return {
            "app_id": app.app_id, "tier": app.tier, "features": dict(app.features),
            "webhook": app.webhook, "recall_window_s": app.recall_window_s,
            "limits_override": dict(app.limits_override), "pending": app.pending,
            "effective": {"tier": app.tier, "limits_tier": app.limits_tier,
                          "limits": limits_dict(limits), "features": app.feature_list()},
        }

    async def provision(request: web.Request) -> web.Response:
        app = service.apps.get(request.match_info["app_id"])
        key = _bearer(request)
        if app is None or not hmac.compare_digest(_bytes(key), app.app_key.encode()):
            raise ApiError(401, "unauthorized", "unknown app or wrong app key")
        body = await _json(request)
        user_id = body.get("user_id")
        if user_id is None:
            user_id = f"u{secrets.token_hex(6)}"
            while user_id in app.users:
                user_id = f"u{secrets.token_hex(6)}"
        if not isinstance(user_id, str) or not ID_RE.match(user_id):
            raise _bad(f"'user_id' must be 1-64 of letters, digits, _.@- ; got {_shown(user_id)}")
        ttl = _num(body, "ttl_s")
        ttl = 3600.0 if ttl is None else ttl
        await service.ensure_user(app, user_id)
        now = time.time()
        token = tokens.mint(app.app_id, app.app_key, user_id, ttl_s=ttl, now=now)
        return web.json_response({"user_id": user_id, "token": token, "expires_at": now + ttl})

    async def create_app(request: web.Request) -> web.Response:
        admin_only(request)
        body = await _json(request)
        app_id = body.get("app_id")
        if app_id is None:
            app_id = service.new_app_id()
        elif not isinstance(app_id, str) or not ID_RE.match(app_id):
            raise _bad(f"'app_id' must be 1-64 of letters, digits, _.@- ; got {_shown(app_id)}")
        if app_id in service.apps:
            raise ApiError(409, "bad_request", f"app {app_id!r} exists; pick another app_id")
        tier = _tier(body.get("tier", "free"))
        app = AppState(
            app_id=app_id, app_key=secrets.token_urlsafe(24), tier=tier, limits_tier=tier,
            features={name: False for name in OPTIONAL_FEATURES} | _features(body.get("features")),
            webhook=_webhook(body.get("webhook")), recall_window_s=_num(body, "recall_window_s"),
            limits_override={k: v for k, v in _limits(body.get("limits")).items() if v is not None},
        )
        await service.create_app(app)
        log.info("created app %s (tier %s)", app_id, tier)
        return web.json_response({"app_id": app_id, "app_key": app.app_key})

    async def show_app(request: web.Request) -> web.Response:
        admin_only(request)
        return web.json_response(describe(get_app(request.match_info["app_id"])))

    async def patch_app(request: web.Request) -> web.Response:
        admin_only(request)
        app = get_app(request.match_info["app_id"])
        body = await _json(request)
        unknown = set(body) - {"tier", "features", "webhook", "recall_window_s", "limits",
                               "delay_s"}
        if unknown:
            raise _bad(f"unknown field {sorted(unknown)[0]!r}; known: tier, features, webhook, "
                       "recall_window_s, limits, delay_s")
        changes: dict[str, Any] = {}
        if body.get("tier") is not None:
            changes["tier"] = _tier(body["tier"])
        if "features" in body:
            changes["features"] = _features(body["features"])
        if "webhook" in body:
            changes["webhook"] = _webhook(body["webhook"])
        if "recall_window_s" in body:
            changes["recall_window_s"] = _num(body, "recall_window_s")
        if "limits" in body:
            changes["limits"] = _limits(body["limits"])
        delay = _num(body, "delay_s")
        delay = service.config.propagation_delay if delay is None else delay
        app.settle()
        effective_at = time.time() + delay
        if delay <= 0:
            app.apply(changes)
        else:
            app.pending.append({"effective_at": effective_at, "changes": changes})
            app.pending.sort(key=lambda p: p["effective_at"])
        await service.save_app(app)
        log.info("app %s changed %s, effective in %.3fs", app.app_id, sorted(changes), delay)
        return web.json_response({"effective_at": effective_at})

    async def counters(request: web.Request) -> web.Response:
        admin_only(request)
        return web.json_response(service.counters_snapshot())

    async def get_defects(request: web.Request) -> web.Response:
        admin_only(request)
        return web.json_response({"defects": defects.snapshot()})

    async def put_defects(request: web.Request) -> web.Response:
        admin_only(request)
        body = await _json(request)
        for name, flag in body.items():
            if name not in defects.DEFECTS:
                raise _bad(f"unknown defect {_shown(name)}; known: {', '.join(defects.DEFECTS)}")
            if not isinstance(flag, bool):
                raise _bad(f"defect {name!r} must be true or false")
        for name, flag in body.items():
            defects.set_defect(name, flag)
        log.info("defects now on: %s", [n for n, v in defects.snapshot().items() if v])
        return web.json_response({"defects": defects.snapshot()})

    web_app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    web_app.router.add_post("/apps/{app_id}/users", provision)
    web_app.router.add_post("/admin/apps", create_app)
    web_app.router.add_get("/admin/apps/{app_id}", show_app)
    web_app.router.add_patch("/admin/apps/{app_id}", patch_app)
    web_app.router.add_get("/admin/counters", counters)
    web_app.router.add_get("/admin/defects", get_defects)
    web_app.router.add_put("/admin/defects", put_defects)
    return web_app
