"""Registration on the platform: the report of a registration (the learned task comes here)."""
