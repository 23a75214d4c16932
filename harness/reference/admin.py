"""Async client of the reference service's HTTP APIs: the admin API and user minting."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from harness.contract import Credentials
from harness.errors import HarnessError, IMError, error_from_wire

HTTP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AppHandle:
    """An app on the reference service: its id and its (secret) app key."""

    app_id: str
    app_key: str = field(repr=False)


def _status_code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            413: "too_large", 429: "rate_limited"}.get(status, "error")


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    bearer: str,
    payload: Mapping[str, Any] | None = None,
    what: str,
) -> Any:
    """One JSON request; HTTP errors become typed `IMError`s naming `what` (never the token)."""
    headers = {"Authorization": f"Bearer {bearer}"}
    try:
        async with session.request(
            method, url, json=payload, headers=headers,
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        ) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HarnessError(
            f"{what}: {method} {url} failed: {type(exc).__name__}: {exc}; is the service running?"
        ) from exc
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {"raw": text[:200]}
    if status < 300:
        return body
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or _status_code(status))
        message = str(err.get("message") or "")
    else:
        code, message = _status_code(status), text[:200]
    if code == "admin_disabled":
        raise HarnessError(
            f"{what}: the service's admin API is disabled; start it with IM_REF_ADMIN_TOKEN set"
        )
    raise error_from_wire(code, f"{what}: HTTP {status}: {message}".rstrip(": "))


async def mint_credentials(
    session: aiohttp.ClientSession,
    api_url: str,
    app: AppHandle,
    user_id: str | None = None,
    ttl_s: float = 3600,
) -> Credentials:
    """Register `user_id` (a fresh id when None) in `app` and mint a token, with the app key."""
    body = await request_json(
        session, "POST", f"{api_url}/apps/{app.app_id}/users", bearer=app.app_key,
        payload={"user_id": user_id, "ttl_s": ttl_s}, what=f"mint user in app {app.app_id!r}",
    )
    try:
        return Credentials(user_id=str(body["user_id"]), token=str(body["token"]))
    except (KeyError, TypeError):
        raise IMError(f"mint user in app {app.app_id!r}: answer lacks user_id/token") from None


class AdminClient:
    """The reference service's admin API; one instance per event loop."""

    def __init__(self, api_url: str, admin_token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = admin_token
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AdminClient({self.api_url!r})"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _admin(self, method: str, path: str, payload: Mapping[str, Any] | None = None,
                     what: str = "") -> Any:
        return await request_json(
            self._http(), method, f"{self.api_url}{path}", bearer=self._token, payload=payload,
            what=what or f"admin {method} {path}",
        )

    async def create_app(
        self,
        *,
        tier: str = "free",
        features: Mapping[str, bool] | None = None,
        webhook: str | None = None,
        recall_window_s: float | None = None,
        app_id: str | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> AppHandle:
        """Create an app and return its id and key; `limits` overrides TierLimits fields."""
        payload: dict[str, Any] = {
            "app_id": app_id, "tier": tier, "features": dict(features or {}),
            "webhook": webhook, "recall_window_s": recall_window_s,
        }
        if limits is not None:
            payload["limits"] = dict(limits)
        body = await self._admin("POST", "/admin/apps", payload,
                                 what=f"create app (tier {tier!r})")
        return AppHandle(app_id=str(body["app_id"]), app_key=str(body["app_key"]))

    async def update_app(
        self,
        app_id: str,
        *,
        tier: str | None = None,
        features: Mapping[str, bool] | None = None,
        webhook: str | None = None,
        recall_window_s: float | None = None,
        delay_s: float | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> float:
        """Change an app's settings; returns the server time at which the change takes effect."""
        payload: dict[str, Any] = {}
        for key, value in (("tier", tier), ("webhook", webhook),
                           ("recall_window_s", recall_window_s), ("delay_s", delay_s)):
            if value is not None:
                payload[key] = value
        if features is not None:
            payload["features"] = dict(features)
        if limits is not None:
            payload["limits"] = dict(limits)
        body = await self._admin("PATCH", f"/admin/apps/{app_id}", payload,
                                 what=f"update app {app_id!r}")
        return float(body["effective_at"])

    async def get_app(self, app_id: str) -> dict:
        """The app's settings and effective limits/features (never its key)."""
        return dict(await self._admin("GET", f"/admin/apps/{app_id}", what=f"get app {app_id!r}"))

    async def counters(self) -> dict:
        """Service-wide counters: connections, messages, deliveries, pushes."""
        return dict(await self._admin("GET", "/admin/counters"))

    async def defects(self) -> dict[str, bool]:
        """The seeded defects and whether each is on."""
        body = await self._admin("GET", "/admin/defects")
        return dict(body.get("defects", body))

    async def set_defects(self, **switches: bool) -> dict[str, bool]:
        """Switch seeded defects on/off; returns the new map."""
        body = await self._admin("PUT", "/admin/defects", switches)
        return dict(body.get("defects", body))

    async def mint_user(
        self, app: AppHandle, user_id: str | None = None, ttl_s: float = 3600
    ) -> Credentials:
        """Register a user in `app` and mint a token (app-server API, with the app key)."""
        return await mint_credentials(self._http(), self.api_url, app, user_id, ttl_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
