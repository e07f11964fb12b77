"""Helpers that start, probe and stop the servers measured by the bench scripts."""
