"""The matrix adapter's `[endpoints.X.options]` (the embedded Synapse's own keys are not here)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.adapters.base import BackoffOptions, Count, PositiveSeconds, Seconds

Rate = Annotated[float, Field(strict=True, ge=0)]


class MatrixOptions(BackoffOptions):
    """Options of adapter 'matrix' (all optional)."""

    server_name: str | None = Field(
        None, description="the homeserver's name, the part of user ids after ':'; unset: "
        "learned at the first registration or login")
    sync_timeout_s: Seconds = Field(
        20.0, description="the /sync long-poll timeout in seconds")
    send_timeout_s: PositiveSeconds | None = Field(
        None, description="send timeout in seconds, network retries included; unset: the "
        "endpoint's send_timeout_s")
    room_version: str | None = Field(
        None, coerce_numbers_to_str=True, description="room version of the rooms the adapter "
        "creates, e.g. '10'; unset: the server's default")
    send_rate_per_user: Rate | None = Field(
        None, description="the server's sustained message rate per user (messages/s), "
        "reported in info.limits; the embedded Synapse sets it from its rate profile")
    send_burst: Count | None = Field(
        None, description="the server's message burst per user, reported in info.limits")
