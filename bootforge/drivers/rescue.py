"""The `agent` rescue interface: boot the bootforge ramdisk on a deployed machine and let the operator in.

rescue: the conductor hashes `instance_info.rescue_password` (crypt SHA-512, as Ironic's
`hashed_rescue_password`) and forgets the plaintext; the machine network-boots the ramdisk; the
agent's `finalize_rescue` puts the hash (and `instance_info.rescue_ssh_key`, if given) on the `rescue`
user and root and starts dropbear on port 22; when it reports success the node is `rescue`. The
machine's disks are never touched: the ramdisk runs from memory.
unrescue: power off, drop the ramdisk boot, boot the instance from its disk -> `active`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import secrets
import string
import threading
from typing import Any, Final

from bootforge.config import Settings
from bootforge.drivers import agent, base
from bootforge.errors import DriverError, InvalidInput

FINALIZE: Final = "finalize_rescue"
# What the conductor's agent service stores of a succeeded command (conductor/agent.py _take_result).
RESULT: Final = f"agent_{FINALIZE}_result"
# Ironic's `rescue_password` length limit is none; ours bounds what is hashed and sent.
MAX_PASSWORD: Final = 256
MAX_SSH_KEY: Final = 16 * 1024
# glibc's and libxcrypt's default for $6$; enough to make an offline guess slow, fast enough to hash here.
ROUNDS: Final = 5000
_SALT_CHARS: Final = string.ascii_letters + string.digits + "./"
_SSH_KEY: Final = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [^\n]*)?$"
)
_crypt_lock = threading.Lock()


def _libcrypt() -> Any:
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise DriverError(f"cannot hash the rescue password: the C library {name} is missing") from None
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib


def hash_password(password: str, salt: str | None = None) -> str:
    """crypt(3) SHA-512 ("$6$salt$...") of `password`, computed by the system's libcrypt.

    Python's `crypt` module is deprecated (gone in 3.13); libcrypt is what it called, and what the
    ramdisk's dropbear checks the hash with.
    """
    salt = salt or "".join(secrets.choice(_SALT_CHARS) for _ in range(16))
    with _crypt_lock:  # crypt() returns a static buffer
        out = _libcrypt().crypt(password.encode(), f"$6${salt}$".encode())
    if not out or not out.startswith(b"$6$"):
        raise DriverError("cannot hash the rescue password: libcrypt does not support SHA-512 ($6$)")
    return str(out.decode())


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not password:
        raise InvalidInput("instance_info.rescue_password must be a non-empty string", "rescue_password")
    if len(password) > MAX_PASSWORD or "\0" in password or "\n" in password:
        raise InvalidInput(
            f"rescue_password must be at most {MAX_PASSWORD} characters, without NUL or newline",
            "rescue_password",
        )
    return password


def check_ssh_key(key: Any) -> str | None:
    if key in (None, ""):
        return None
    if not isinstance(key, str) or len(key) > MAX_SSH_KEY or not _SSH_KEY.match(key.strip()):
        raise InvalidInput(
            "instance_info.rescue_ssh_key must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)",
            "instance_info.rescue_ssh_key",
        )
    return key.strip()


class AgentRescue(base.RescueInterface):
    name = "agent"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_properties(self) -> dict[str, str]:
        return {}

    def validate(self, task: base.Task) -> None:
        # The rescue ramdisk is the deploy ramdisk: what boots it must be able to.
        task.driver.boot.validate(task)
        check_ssh_key(task.node.instance_info.get("rescue_ssh_key"))

    async def rescue(self, task: base.Task) -> base.StepResult:
        info = task.node.driver_internal_info
        if info.get(RESULT) is not None:
            # Resumed after the agent's report (RESCUEWAIT -resume-> RESCUING).
            task.set_internal(**{RESULT: None})
            await task.record("rescue", "the rescue ramdisk is ready: log in as root or rescue on port 22")
            return None
        instance = task.node.instance_info
        password = check_password(instance.get("rescue_password"))
        ssh_key = check_ssh_key(instance.get("rescue_ssh_key"))
        hashed = hash_password(password)
        # The plaintext is not kept once hashed (the API asks for it again for another rescue).
        task.node.instance_info = {k: v for k, v in instance.items() if k != "rescue_password"}
        # From `active` there is no agent boot (the deploy ended it). Like Ironic, the machine is powered
        # off first and then on into the ramdisk: with the qemu driver a reset of a running VM was seen to
        # boot its disk despite the one-time pxe device (lab run, 2026-12-07). A rescue of a node in
        # `rescue` reuses its running agent, with the new password.
        if not await agent.agent_alive(task):
            await task.driver.power.set_power_state(task, base.POWER_OFF)
            task.node.power_state = base.POWER_OFF
        await agent.boot_ramdisk(task, "rescue")
        args = {"hashed_rescue_password": hashed, "authorized_keys": [ssh_key] if ssh_key else []}
        return await agent.send_command(task, FINALIZE, args, "open the rescue login")

    async def unrescue(self, task: base.Task) -> None:
        task.set_internal(**{agent.AGENT_BOOT: None, agent.AGENT_COMMAND: None, RESULT: None})
        power = task.driver.power
        await power.set_power_state(task, base.POWER_OFF)
        task.node.power_state = base.POWER_OFF
        await task.driver.boot.clean_up_ramdisk(task)
        await task.driver.boot.prepare_instance(task)
        await power.set_power_state(task, base.POWER_ON)
        task.node.power_state = base.POWER_ON
        await task.record("rescue", "unrescued: power cycled onto the instance's disk")
