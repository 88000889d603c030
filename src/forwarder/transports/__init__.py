"""Broker transports: kombu's, where the forwarder needs them to behave differently."""
