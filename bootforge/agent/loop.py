"""The agent's main loop: look the node up, long-poll for commands, run each once, post its result.

States (each change is printed as "bootforge-agent: ..." for the serial console)::

    lookup --200--> poll --command--> run (worker thread) --final result--> poll
      ^  404: every 5 s | 409: every 30 s   |            |
      +------------ 401: after 5 s ---------+------------+

While a command runs, the main thread stays with it: it posts the worker's progress at most every
progress_interval seconds and, when there is none, a "running" post every HEARTBEAT seconds (or
progress_interval, if longer), so the conductor hears from the agent even during a long write. It
does not poll meanwhile, so a second command can never start next to the first.

Every wait is bounded (socket timeouts, sleeps); no reply, however odd, ends the loop: it is logged
and the loop carries on. Only lookup and polling are on the path to the first call, so the command
modules (and threading) are imported after the first lookup.
"""

from __future__ import annotations

import time

from . import __version__, log
from .client import (
    AgentApiError,
    Client,
    Command,
    Conflict,
    Lookup,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .common import Context, Progress

    Execute = Callable[[Command, Progress], dict[str, Any]]

# Pauses fixed by the contract.
NOT_FOUND_PAUSE = 5.0
CONFLICT_PAUSE = 30.0
UNAUTHORIZED_PAUSE = 5.0
# Pauses of our own: after a reply we could not use, and before polling again for a command that
# already ran (a conductor that keeps offering it must not make the agent spin).
ERROR_PAUSE = 5.0
REPEAT_PAUSE = 2.0
# Unreachable conductor: back off from 1 s to 30 s.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A running command is reported at least this often, progress or not.
HEARTBEAT = 10.0
# Lower bound for the progress wait, whatever progress_interval the conductor asks for.
MIN_TICK = 0.05
# Empty polls are at least this far apart.
MIN_POLL_GAP = 1.0

RELOOKUP = "relookup"
DONE = "done"


class Settings:
    """What the agent was told at start: from the options, else from the kernel command line."""

    __slots__ = ("api", "boot_token", "cafile", "disks", "macs", "node", "once", "sys_root")

    def __init__(
        self,
        api: str,
        node: str | None,
        macs: list[str],
        sys_root: str = "/",
        disks: list[str] | None = None,
        once: bool = False,
        boot_token: str | None = None,
        cafile: str | None = None,
    ) -> None:
        self.api = api
        self.node = node
        self.macs = macs
        self.sys_root = sys_root
        self.disks = disks
        self.once = once
        self.boot_token = boot_token
        self.cafile = cafile


class Agent:
    """The loop. ``sleep`` and ``clock`` are injected so tests run it without waiting."""

    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        execute: Execute | None = None,
        cmdline: dict[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or Client(
            settings.api, user_agent=f"bootforge-agent/{__version__}", cafile=settings.cafile
        )
        self._execute = execute or self._execute_here
        self._cmdline = cmdline or {}
        self._context: Context | None = None
        self.sleep = sleep
        self.clock = clock
        # id -> the final body still to be delivered, or None once delivered (or dropped by the
        # conductor). An id in here is never run again.
        self.ran: dict[str, dict[str, Any] | None] = {}
        self._repeats_logged: set[str] = set()

    def run(self) -> int:
        """Serve until --once is satisfied; without it, forever."""
        while True:
            try:
                session = self.lookup()
                if self.serve(session) == DONE:
                    return 0
            except Exception:  # a bug must not end the agent: the machine would be lost until rebooted
                log(f"unexpected error, starting over with lookup:\n{_traceback()}")
            self.sleep(UNAUTHORIZED_PAUSE)

    # -- lookup -------------------------------------------------------------------------------

    def lookup(self) -> Lookup:
        """Ask for the node and a token until the conductor hands them out."""
        s = self.settings
        log(f"looking up node {s.node or '(by MAC)'} by {', '.join(s.macs) or 'no MAC'} at {s.api}")
        misses, delay = 0, BACKOFF_FIRST
        while True:
            try:
                found = self.client.lookup(s.macs, s.node, s.boot_token)
            except NotFound:
                if misses % 10 == 0:
                    log(f"no node expects an agent with these MACs (404); asking every {NOT_FOUND_PAUSE:g} s")
                misses += 1
                self.sleep(NOT_FOUND_PAUSE)
                continue
            except Conflict as exc:
                log(f"token already issued for this boot (409: {exc.detail}); retry in {CONFLICT_PAUSE:g} s")
                self.sleep(CONFLICT_PAUSE)
                continue
            except AgentApiError as exc:
                delay = self._pause_after(exc, delay, "lookup")
                continue
            self.client.token = found.token
            name = f" ({found.node_name})" if found.node_name else ""
            log(f"node {found.node_uuid}{name} found; polling for commands")
            return found

    def _pause_after(self, exc: AgentApiError, delay: float, doing: str) -> float:
        """Log a failed call and wait: backing off if the conductor is unreachable. Returns the next delay."""
        if isinstance(exc, TransportError | ServerError):
            log(f"{doing} failed ({exc}); retrying in {delay:g} s")
            self.sleep(delay)
            return min(delay * 2, BACKOFF_MAX)
        log(f"{doing} failed ({exc}); retrying in {ERROR_PAUSE:g} s")
        self.sleep(ERROR_PAUSE)
        return delay

    # -- polling ------------------------------------------------------------------------------

    def serve(self, session: Lookup) -> str:
        """Poll and run commands until the token is gone (RELOOKUP) or --once is done (DONE)."""
        delay = BACKOFF_FIRST
        while True:
            asked = self.clock()
            try:
                command = self.client.next_command(session.node_uuid, session.poll_timeout)
            except (Unauthorized, NotFound) as exc:
                log(f"polling: {exc}; looking the node up again in {UNAUTHORIZED_PAUSE:g} s")
                return RELOOKUP
            except AgentApiError as exc:
                delay = self._pause_after(exc, delay, "polling")
                continue
            delay = BACKOFF_FIRST
            if command is None:
                # A conductor that does not hold the poll (or poll_timeout 0) must not make us spin.
                self.sleep(max(0.0, MIN_POLL_GAP - (self.clock() - asked)))
                continue
            if command.id in self.ran:
                if self._offered_again(session, command) == RELOOKUP:
                    return RELOOKUP
                continue
            if self.handle(session, command) == RELOOKUP:
                return RELOOKUP
            if self.settings.once:
                return DONE

    def _offered_again(self, session: Lookup, command: Command) -> str | None:
        """A command that ran is offered again: post its result if that had failed; never run it twice."""
        pending = self.ran[command.id]
        if pending is not None:
            log(f"command {command.id} offered again: posting its result again")
            if self._deliver(session, command, pending) == RELOOKUP:
                return RELOOKUP
            if self.ran[command.id] is not None:
                self.sleep(ERROR_PAUSE)
            return None
        if command.id not in self._repeats_logged:
            self._repeats_logged.add(command.id)
            log(f"command {command.id} ({command.name}) already ran; not running it again")
        self.sleep(REPEAT_PAUSE)
        return None

    # -- running a command --------------------------------------------------------------------

    def handle(self, session: Lookup, command: Command) -> str | None:
        """Run one command in a worker thread and post its final result; RELOOKUP if the token died."""
        self.ran[command.id] = None
        log(f"running command {command.id}: {command.name}")
        started = self.clock()
        reporter = Reporter(self, session, command)
        final = reporter.run_worker(self._execute)
        took = self.clock() - started
        outcome = f"failed: {final['error']}" if "error" in final else "succeeded"
        log(f"command {command.id} ({command.name}) {outcome} ({took:.1f} s)")
        if reporter.fate == "unauthorized":
            return self._keep_for_next_token(command, final)
        if reporter.fate == "dropped":
            log(f"command {command.id} is no longer current (409); result dropped")
            return None
        return self._deliver(session, command, final)

    def _deliver(self, session: Lookup, command: Command, final: dict[str, Any]) -> str | None:
        def on_retry(exc: AgentApiError, pause: float) -> None:
            log(f"posting the result of {command.id} failed ({exc}); retrying in {pause:g} s")

        try:
            self.client.post_final(
                session.node_uuid, command.id, final, on_retry=on_retry, sleep=self.sleep, clock=self.clock
            )
        except Conflict as exc:
            log(f"result of {command.id} refused, the command is no longer current (409: {exc.detail})")
        except Unauthorized:
            return self._keep_for_next_token(command, final)
        except AgentApiError as exc:
            self.ran[command.id] = final
            log(f"could not post the result of {command.id} ({exc}); will post it when it is offered again")
            return None
        else:
            log(f"result of {command.id} accepted")
        self.ran[command.id] = None
        return None

    def _keep_for_next_token(self, command: Command, final: dict[str, Any]) -> str:
        # Should the conductor offer this command again under the next token, it gets this result.
        self.ran[command.id] = final
        log(f"token no longer valid; looking the node up again (result of {command.id} kept)")
        return RELOOKUP

    def _execute_here(self, command: Command, progress: Progress) -> dict[str, Any]:
        from . import commands

        return commands.execute(command.name, command.args, self.context(), progress)

    def context(self) -> Context:
        """The machine the commands act on (built on first use: common imports dataclasses)."""
        if self._context is None:
            from pathlib import Path

            from .common import Context

            s = self.settings
            disks = [Path(d) for d in s.disks] if s.disks else None
            self._context = Context(sys_root=Path(s.sys_root), disks=disks, cmdline=dict(self._cmdline))
        return self._context


class Reporter:
    """Runs one command in a worker thread and keeps the conductor informed while it runs.

    The worker only records its latest progress (cheap, as Progress promises); posting happens here,
    on the main thread, so a slow conductor never slows the command down.
    """

    def __init__(self, agent: Agent, session: Lookup, command: Command) -> None:
        import threading

        self.agent = agent
        self.session = session
        self.command = command
        self._lock = threading.Lock()
        self._latest: tuple[int, int, str] = (0, 0, command.name)
        self._changed = False
        self._last_post = agent.clock()
        # None while the conductor still wants this command; "dropped" (409) or "unauthorized" (401).
        self.fate: str | None = None

    def progress(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self._latest = (done, total, message)
            self._changed = True

    def run_worker(self, execute: Execute) -> dict[str, Any]:
        import threading

        finished = threading.Event()
        box: list[dict[str, Any]] = []

        def work() -> None:
            try:
                box.append(execute(self.command, self.progress))
            except BaseException as exc:  # the worker must always leave a result behind
                box.append({"status": "failed", "error": f"{self.command.name} crashed: {exc!r}"})
            finally:
                finished.set()

        worker = threading.Thread(target=work, name=f"command-{self.command.id}", daemon=True)
        worker.start()
        tick = max(self.session.progress_interval, MIN_TICK)
        while not finished.wait(tick):
            self.tick()
        worker.join()
        return box[0]

    def tick(self) -> None:
        """Post progress if there is news, or a heartbeat if the conductor has not heard from us."""
        if self.fate is not None:
            return
        now = self.agent.clock()
        interval = self.session.progress_interval
        quiet = now - self._last_post
        with self._lock:
            if quiet < interval or (not self._changed and quiet < max(HEARTBEAT, interval)):
                return
            done, total, message = self._latest
            self._changed = False
        self._last_post = now
        body = {"status": "running", "progress": {"done": done, "total": total, "message": message}}
        try:
            self.agent.client.post(self.session.node_uuid, self.command.id, body)
        except Conflict:
            self.fate = "dropped"
        except Unauthorized:
            self.fate = "unauthorized"
        except AgentApiError as exc:
            log(f"progress of {self.command.id} not posted ({exc}); the command goes on")


def _traceback() -> str:
    import traceback

    return traceback.format_exc().rstrip()
