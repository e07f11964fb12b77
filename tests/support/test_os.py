"""The lab's sample OS image (bootforge.lab.sample_os), under the name the deploy tests use."""

from bootforge.lab.sample_os import (
    BOOTED_MARKER,
    CONFIG_DRIVE_LABEL,
    IMAGE_MIB,
    NO_CONFIG_DRIVE_MARKER,
    REQUIRED_TOOLS,
    USER_DATA_MARKER,
    TestOsError,
    append_config_drive,
    build_test_os,
    config_drive_iso,
    missing_tools,
)

__all__ = [
    "BOOTED_MARKER",
    "CONFIG_DRIVE_LABEL",
    "IMAGE_MIB",
    "NO_CONFIG_DRIVE_MARKER",
    "REQUIRED_TOOLS",
    "USER_DATA_MARKER",
    "TestOsError",
    "append_config_drive",
    "build_test_os",
    "config_drive_iso",
    "missing_tools",
]
