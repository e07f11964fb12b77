"""Sans-IO network boot protocol cores (DHCP, TFTP) and pure boot decisions.

Nothing in this package opens a socket, reads a clock or imports another bootforge package:
bytes and a `now` go in, events and bytes come out. The asyncio shells live in `bootforge.servers`.
"""
