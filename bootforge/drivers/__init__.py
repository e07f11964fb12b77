"""Driver interfaces (power, management, boot, deploy, inspect, ...) composed into hardware types."""
