"""bootforge: take any machine from powered off and never seen to running the OS that was asked for."""

__version__ = "0.1.0"
