"""Clients: over the broker (``ForwarderClient``), over the gateway (``GatewayClient``), the
idempotency store both share, and the dead-letter queue's reader.
"""
