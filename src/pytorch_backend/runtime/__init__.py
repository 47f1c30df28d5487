"""Per-instance torch state: settings, devices and streams, execution hooks, weight sharing."""
