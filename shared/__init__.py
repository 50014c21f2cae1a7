"""Code shared by the collector, the API and subscriber scripts (wire protocol, config)."""
