"""Code shared by the collector, the API and subscriber scripts (wire protocol, config)."""
__version__ = "0.2.0"
