"""The agent loop (loop.Agent) against a scripted conductor: lookup retries, run-once, progress, 401/409.

The conductor here is a Client subclass whose calls answer from a script (values or exceptions); its
post_final is the real one, so the retry logic runs with the agent's fake clock. Sleeps advance that
clock and are recorded, so nothing here waits for real except on the worker thread's handshakes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from agent_fakes import FakeTime

from bootforge.agent import loop
from bootforge.agent.client import (
    BadReply,
    Client,
    Command,
    Conflict,
    Lookup,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)
from bootforge.agent.common import Progress
from bootforge.agent.loop import Agent, Settings

NODE = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
MAC = "52:54:00:12:34:56"


class ScriptEnd(BaseException):
    """Raised when the script runs out: the loop does not catch it, so the test regains control."""


def http(error: type[Exception], status: int) -> Exception:
    return error("GET", "/x", status, "scripted")


def session(token: str = "t1", progress_interval: float = 0.0) -> Lookup:
    return Lookup(NODE, "n1", token, 5, progress_interval)


class ScriptedClient(Client):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9")
        self.lookups: list[Any] = []
        self.polls: list[Any] = []
        self.posts: list[Any] = []
        self.bodies: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []
        self.boot_tokens: list[str | None] = []
        self.posted = threading.Event()
        # Posts fail with TransportError while outage() is true.
        self.outage: Callable[[], bool] = lambda: False
        self.before_poll: Callable[[], None] = lambda: None

    @staticmethod
    def _next(script: list[Any]) -> Any:
        if not script:
            raise ScriptEnd
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def lookup(self, macs: list[str], node_uuid: str | None, boot_token: str | None = None) -> Lookup:
        self.calls.append(("lookup", (tuple(macs), node_uuid)))
        self.boot_tokens.append(boot_token)
        found: Lookup = self._next(self.lookups)
        return found

    def next_command(self, node_uuid: str, wait: int) -> Command | None:
        self.calls.append(("poll", self.token))
        self.before_poll()
        command: Command | None = self._next(self.polls)
        return command

    def post(self, node_uuid: str, command_id: str, body: dict[str, Any]) -> None:
        self.calls.append(("post", (command_id, body["status"], self.token)))
        self.bodies.append(body)
        if self.outage():
            raise TransportError("down")
        try:
            self._next(self.posts) if self.posts else None
        finally:
            self.posted.set()


Execute = Callable[[Command, Progress], dict[str, Any]]


def make_agent(
    execute: Execute | None = None, once: bool = False
) -> tuple[Agent, ScriptedClient, FakeTime, list[str]]:
    client, t = ScriptedClient(), FakeTime()
    client.token = "t1"  # as lookup leaves it; tests of serve() start there
    ran: list[str] = []

    def record(command: Command, progress: Progress) -> dict[str, Any]:
        ran.append(command.id)
        return {"status": "succeeded", "result": {"id": command.id}}

    agent = Agent(
        Settings("http://127.0.0.1:9", NODE, [MAC], once=once, boot_token="ab" * 32),
        client=client,
        execute=execute or record,
        sleep=t.sleep,
        clock=t.clock,
    )
    return agent, client, t, ran


def cmd(ident: str, name: str = "inspect") -> Command:
    return Command(ident, name, {})


def posts(client: ScriptedClient) -> list[Any]:
    return [args for kind, args in client.calls if kind == "post"]


# -- lookup ------------------------------------------------------------------------------------------


def test_every_lookup_shows_the_boot_token_of_the_kernel_command_line() -> None:
    agent, client, _, _ = make_agent()
    client.lookups = [http(NotFound, 404), session("tok")]
    agent.lookup()
    assert client.boot_tokens == ["ab" * 32, "ab" * 32]


def test_lookup_retries_404_every_5s_and_logs_every_10th(capsys: pytest.CaptureFixture[str]) -> None:
    agent, client, t, _ = make_agent()
    client.lookups = [http(NotFound, 404)] * 11 + [session("tok")]
    found = agent.lookup()
    assert found.token == client.token == "tok"
    assert t.sleeps == [5.0] * 11
    assert client.calls[0] == ("lookup", ((MAC,), NODE))
    out = capsys.readouterr().out
    assert out.count("(404)") == 2
    assert all(line.startswith("bootforge-agent: ") for line in out.splitlines())
    assert "tok" not in out


def test_lookup_waits_30s_on_409_and_backs_off_when_unreachable() -> None:
    agent, client, t, _ = make_agent()
    down = TransportError("refused")
    client.lookups = [http(Conflict, 409), down, down, http(ServerError, 503), down, BadReply("x"), session()]
    agent.lookup()
    assert t.sleeps == [30.0, 1.0, 2.0, 4.0, 8.0, 5.0]


# -- polling and running ---------------------------------------------------------------------------------


def test_each_command_runs_once_and_its_result_is_posted() -> None:
    agent, client, t, ran = make_agent()
    client.polls = [None, cmd("c1"), None, cmd("c1"), cmd("c1"), cmd("c2")]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert ran == ["c1", "c2"]
    assert posts(client) == [("c1", "succeeded", "t1"), ("c2", "succeeded", "t1")]
    # Empty polls are spaced out; a command offered again after its result was accepted gets a
    # short pause each time, never a rerun.
    gap = loop.MIN_POLL_GAP
    assert t.sleeps == [gap, gap, loop.REPEAT_PAUSE, loop.REPEAT_PAUSE]


def test_unauthorized_poll_goes_back_to_lookup() -> None:
    agent, client, _, _ = make_agent()
    client.polls = [http(Unauthorized, 401)]
    assert agent.serve(session()) == loop.RELOOKUP


def test_run_relooks_up_after_401_with_the_new_token(capsys: pytest.CaptureFixture[str]) -> None:
    agent, client, t, _ = make_agent()
    client.lookups = [session("t1"), session("t2")]
    client.polls = [cmd("c1"), http(Unauthorized, 401), cmd("c2")]
    with pytest.raises(ScriptEnd):
        agent.run()
    kinds = [kind for kind, _ in client.calls]
    assert kinds == ["lookup", "poll", "post", "poll", "lookup", "poll", "post", "poll"]
    assert posts(client) == [("c1", "succeeded", "t1"), ("c2", "succeeded", "t2")]
    assert t.sleeps == [loop.UNAUTHORIZED_PAUSE]
    assert "looking the node up again" in capsys.readouterr().out


def test_once_returns_after_the_first_result() -> None:
    agent, client, _, ran = make_agent(once=True)
    client.lookups = [session()]
    client.polls = [None, cmd("c1"), cmd("c2")]
    assert agent.run() == 0
    assert ran == ["c1"]


def test_bad_replies_and_outages_while_polling_are_retried() -> None:
    agent, client, t, ran = make_agent()
    down = TransportError("reset")
    client.polls = [BadReply("not json"), down, down, None, down, http(ServerError, 500), cmd("c1")]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert t.sleeps == [loop.ERROR_PAUSE, 1.0, 2.0, loop.MIN_POLL_GAP, 1.0, 2.0]
    assert ran == ["c1"]


def test_a_result_refused_with_409_is_dropped_not_retried() -> None:
    agent, client, _, _ = make_agent()
    client.polls = [cmd("c1")]
    client.posts = [http(Conflict, 409)]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert posts(client) == [("c1", "succeeded", "t1")]
    assert agent.ran == {"c1": None}


def test_an_undelivered_result_is_posted_again_when_offered_again() -> None:
    agent, client, t, ran = make_agent()
    client.polls = [cmd("c1"), cmd("c1")]
    # Unreachable for longer than the 10 minutes of patience, then back.
    client.outage = lambda: t.now < 700
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert ran == ["c1"]
    assert sum(t.sleeps) >= 700
    assert agent.ran["c1"] is None  # delivered on the second offer
    assert posts(client)[-1] == ("c1", "succeeded", "t1")


def test_a_result_that_gets_401_is_kept_for_the_next_token() -> None:
    agent, client, _, ran = make_agent()
    client.lookups = [session("t1"), session("t2")]
    client.polls = [cmd("c1"), cmd("c1")]
    client.posts = [http(Unauthorized, 401)]
    with pytest.raises(ScriptEnd):
        agent.run()
    assert ran == ["c1"]
    assert posts(client) == [("c1", "succeeded", "t1"), ("c1", "succeeded", "t2")]
    assert agent.ran == {"c1": None}


# -- progress while a command runs ------------------------------------------------------------------------


def blocking_execute(client: ScriptedClient, steps: int = 1) -> Execute:
    """A command that reports progress and waits until the agent has posted it (bounded)."""

    def execute(command: Command, progress: Progress) -> dict[str, Any]:
        for i in range(steps):
            client.posted.clear()
            progress(i + 1, steps, f"step {i + 1}")
            if not client.posted.wait(10):
                return {"status": "failed", "error": "progress was never posted"}
        return {"status": "succeeded", "result": {}}

    return execute


def test_progress_is_posted_from_the_main_thread_while_the_command_runs() -> None:
    client_box: list[ScriptedClient] = []
    agent, client, _, _ = make_agent(execute=lambda c, p: blocking_execute(client_box[0], 2)(c, p))
    client_box.append(client)
    client.polls = [cmd("c1")]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert posts(client) == [("c1", "running", "t1"), ("c1", "running", "t1"), ("c1", "succeeded", "t1")]


def test_progress_refused_with_409_drops_the_result() -> None:
    client_box: list[ScriptedClient] = []
    agent, client, _, _ = make_agent(execute=lambda c, p: blocking_execute(client_box[0])(c, p))
    client_box.append(client)
    client.polls = [cmd("c1")]
    client.posts = [http(Conflict, 409)]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert posts(client) == [("c1", "running", "t1")]
    assert agent.ran == {"c1": None}


def test_progress_refused_with_401_sends_the_agent_to_lookup_after_the_command() -> None:
    client_box: list[ScriptedClient] = []
    agent, client, _, _ = make_agent(execute=lambda c, p: blocking_execute(client_box[0])(c, p))
    client_box.append(client)
    client.polls = [cmd("c1")]
    client.posts = [http(Unauthorized, 401)]
    assert agent.serve(session()) == loop.RELOOKUP
    assert posts(client) == [("c1", "running", "t1")]
    assert agent.ran["c1"] == {"status": "succeeded", "result": {}}


def test_heartbeat_without_progress() -> None:
    agent, client, t, _ = make_agent()
    reporter = loop.Reporter(agent, session(), cmd("c1"))
    reporter.tick()
    assert posts(client) == []
    t.now += loop.HEARTBEAT
    reporter.tick()
    assert posts(client) == [("c1", "running", "t1")]
    reporter.tick()
    assert len(posts(client)) == 1


def test_progress_waits_for_the_interval() -> None:
    agent, client, t, _ = make_agent()
    reporter = loop.Reporter(agent, session(progress_interval=3.0), cmd("c1"))
    reporter.progress(1, 4, "a")
    t.now += 2.9
    reporter.tick()
    assert posts(client) == []
    reporter.progress(2, 4, "b")
    t.now += 0.1
    reporter.tick()
    assert client.bodies == [{"status": "running", "progress": {"done": 2, "total": 4, "message": "b"}}]


def test_a_long_progress_interval_stretches_the_heartbeat() -> None:
    agent, client, t, _ = make_agent()
    reporter = loop.Reporter(agent, session(progress_interval=2 * loop.HEARTBEAT), cmd("c1"))
    t.now += loop.HEARTBEAT
    reporter.tick()
    assert posts(client) == []
    t.now += loop.HEARTBEAT
    reporter.tick()
    assert len(posts(client)) == 1


def test_empty_polls_that_took_their_time_are_not_spaced_out() -> None:
    agent, client, t, _ = make_agent()

    def slow_empty_poll() -> None:
        t.now += 5

    client.polls = [None, None]
    client.before_poll = slow_empty_poll
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert t.sleeps == [0.0, 0.0]


def test_a_bug_in_the_loop_starts_over_at_lookup(capsys: pytest.CaptureFixture[str]) -> None:
    agent, client, t, ran = make_agent()
    client.lookups = [session("t1"), session("t2")]
    client.polls = [RuntimeError("bug"), cmd("c1")]
    with pytest.raises(ScriptEnd):
        agent.run()
    assert ran == ["c1"] and client.token == "t2"
    assert t.sleeps == [loop.UNAUTHORIZED_PAUSE]
    assert "RuntimeError: bug" in capsys.readouterr().out


def test_a_crashing_command_still_leaves_a_failed_result() -> None:
    def explode(command: Command, progress: Progress) -> dict[str, Any]:
        raise KeyboardInterrupt

    agent, client, _, _ = make_agent(execute=explode)
    client.polls = [cmd("c1")]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    assert posts(client) == [("c1", "failed", "t1")]


def test_real_commands_run_in_the_agents_context(tmp_path: Any) -> None:
    client, t = ScriptedClient(), FakeTime()
    agent = Agent(Settings("http://x:1", NODE, [MAC], sys_root=str(tmp_path)), client=client, sleep=t.sleep)
    client.token = "t1"
    client.polls = [Command("c1", "frobnicate", {}), Command("c2", "inspect", {"lldp_wait": 0})]
    with pytest.raises(ScriptEnd):
        agent.serve(session())
    failed, inspected = client.bodies
    assert failed == {"status": "failed", "error": failed["error"]}
    assert "'frobnicate'" in failed["error"]
    assert inspected["status"] == "succeeded"
    assert agent.context().sys_root == tmp_path
