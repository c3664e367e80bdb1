"""The device manager: devices from Redis configuration to live values, reads and commands."""
