"""Thin asyncio shells around the sans-IO cores in `bootforge.netboot`: sockets, timers, logs."""
