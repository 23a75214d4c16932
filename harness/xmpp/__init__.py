"""XMPP for im-harness, shipped as a third party would: an adapter and an embedded Prosody.

Registered only through entry points (`im_harness.adapters` xmpp, `im_harness.servers` xmpp);
it uses the harness's public plugin surface and nothing else.
"""
