"""Lab support: private network namespaces and (later) QEMU test nodes for end-to-end boots."""
