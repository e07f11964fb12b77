"""What bootforge tells the outside about itself: Prometheus metrics, outbound events (webhooks as
CloudEvents) and server-sent event streams. The conductor reports to one Observer; nothing here
drives a node."""
