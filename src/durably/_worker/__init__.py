"""The worker: claiming, leases, timers, concurrency; it drives the engine."""
