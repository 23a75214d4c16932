"""A real Matrix homeserver (Synapse) as an endpoint: installed and started by the harness."""

from harness.matrix.launcher import KNOWN_VERSIONS, SynapseServer, install_synapse

__all__ = ["KNOWN_VERSIONS", "SynapseServer", "install_synapse"]
