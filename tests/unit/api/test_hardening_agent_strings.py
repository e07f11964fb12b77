"""Issue #11: what an agent reports (anyone holding a node's agent session can report anything) reaches
the node's timeline escaped: one line, no terminal escapes, bounded."""

from __future__ import annotations

from apihelp import Api
from test_api_agent import agent_api, enrolled, lookup, poll, report

__all__ = ["agent_api"]  # the fixture, used by name below


async def test_an_agent_error_with_a_newline_and_an_ansi_escape_is_one_escaped_timeline_line(
    agent_api: Api,
) -> None:
    api = agent_api
    node = await enrolled(api)
    await api.drive(node, "provide")
    token = await lookup(api)
    command = await poll(api, node, token)
    assert command is not None
    error = "wipefs failed\nFORGED: node adopted by \x1b[31mmallory\x1b[0m" + "!" * 5000
    assert await report(api, node, token, command["id"], status="failed", error=error) == 200
    r = await api.c.get(f"/v1/nodes/{node}/history", params={"detail": "true"})
    assert r.status_code == 200, r.text
    agent = [e["event"] for e in r.json()["history"] if "FORGED" in e["event"]]
    assert agent, r.json()["history"]
    for text in agent:
        assert text.isprintable() and "\n" not in text and "\x1b" not in text, repr(text)
        assert "wipefs failed\\x0aFORGED: node adopted by \\x1b[31mmallory" in text
        assert len(text) < 1100 and "...[" in text
    last_error = (await api.get(node))["last_error"]
    assert last_error.isprintable() and "\\x1b[31mmallory" in last_error and len(last_error) < 700
