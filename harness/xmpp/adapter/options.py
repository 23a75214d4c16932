"""The xmpp adapter's `[endpoints.X.options]` (the embedded Prosody's own keys are not here)."""

from __future__ import annotations

from pydantic import Field

from harness.adapters.base import BackoffOptions, PositiveSeconds, Seconds


class XmppOptions(BackoffOptions):
    """Options of adapter 'xmpp' (all optional)."""

    domain: str = Field("localhost", description="the XMPP domain of the users, the part of "
                        "JIDs after '@'")
    muc_domain: str | None = Field(
        None, description="the multi-user chat service of the groups (XEP-0045); unset: "
        "conference.<domain>")
    send_timeout_s: PositiveSeconds | None = Field(
        None, description="send timeout in seconds; unset: the endpoint's send_timeout_s")
    keepalive_s: Seconds = Field(
        5.0, description="seconds between XEP-0199-style liveness checks of an idle "
        "connection (0: none); a dead link is noticed within keepalive_s + "
        "keepalive_timeout_s")
    keepalive_timeout_s: PositiveSeconds = Field(
        5.0, description="seconds a liveness check waits for the server's answer")
