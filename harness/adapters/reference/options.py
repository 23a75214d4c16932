"""The reference adapter's `[endpoints.X.options]`."""

from __future__ import annotations

from pydantic import Field

from harness.adapters.base import BackoffOptions, Count, PositiveSeconds, Seconds


class ReferenceOptions(BackoffOptions):
    """Options of adapter 'reference' (all optional; an embedded service sets `api_url`)."""

    api_url: str | None = Field(
        None, description="the service's HTTP API (app server and admin), "
        "e.g. http://127.0.0.1:PORT; required, set by the harness for an embedded service")
    max_reconnect_attempts: Count | None = Field(
        None, description="automatic reconnect attempts before the client gives up; "
        "unset: unlimited")
    ping_interval_s: Seconds | None = Field(
        None, description="seconds between client pings, also the pong timeout; 0: no pings; "
        "unset: the protocol's keepalive (v1 30 s, v2 15 s)")
    token_ttl_s: PositiveSeconds = Field(
        3600.0, description="lifetime in seconds of the tokens minted for provisioned users")
    send_timeout_s: PositiveSeconds | None = Field(
        None, description="send and request timeout in seconds; unset: the endpoint's "
        "send_timeout_s if set, else the protocol's (v1 10 s, v2 5 s)")
