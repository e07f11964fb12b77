"""The provision state machine table: Ironic's states and edges, and the errors a wrong verb gets."""

import pytest

from bootforge.conductor import states
from bootforge.errors import InvalidStateTransition

# The states issue #2 names, byte for byte as Ironic spells them.
IRONIC_STATES = {
    "enroll",
    "verifying",
    "manageable",
    "inspecting",
    "inspect wait",
    "inspect failed",
    "cleaning",
    "clean wait",
    "clean failed",
    "clean hold",
    "available",
    "deploying",
    "wait call-back",
    "deploy failed",
    "deploy hold",
    "active",
    "deleting",
    "error",
    "rescuing",
    "rescue wait",
    "rescue",
    "rescue failed",
    "unrescuing",
    "unrescue failed",
    "adopting",
    "adopt failed",
}


def test_every_ironic_state_is_in_the_table() -> None:
    assert states.ALL_STATES == IRONIC_STATES


@pytest.mark.parametrize(
    ("start", "events", "end"),
    [
        ("enroll", ["manage", "done", "provide", "done"], "available"),
        ("available", ["deploy", "done"], "active"),
        ("available", ["deploy", "wait", "resume", "done"], "active"),
        ("available", ["deploy", "wait", "fail"], "deploy failed"),
        ("deploy failed", ["deploy", "done"], "active"),
        ("active", ["delete", "clean", "done"], "available"),
        ("manageable", ["inspect", "wait", "done"], "manageable"),
        ("manageable", ["clean", "manage"], "manageable"),
        ("clean failed", ["manage"], "manageable"),
        ("active", ["rescue", "wait", "done", "unrescue", "done"], "active"),
        ("manageable", ["adopt", "done"], "active"),
        ("available", ["deploy", "wait", "abort"], "deploy failed"),
        ("verifying", ["fail"], "enroll"),
        ("deleting", ["fail"], "error"),
        ("error", ["rebuild", "done"], "active"),
    ],
)
def test_paths(start: str, events: list[str], end: str) -> None:
    state = start
    for event in events:
        state = states.advance(state, event)
    assert state == end


def test_wrong_verb_names_state_and_verb() -> None:
    with pytest.raises(InvalidStateTransition) as info:
        states.advance("enroll", "deploy", verb="active")
    assert '"active"' in info.value.message and '"enroll"' in info.value.message


def test_every_transient_state_has_a_target_and_can_fail() -> None:
    for state in states.ACTIVE_WORK_STATES | states.WAIT_STATES:
        assert (state, "fail") in states.TRANSITIONS, state
        assert states.FAIL_STATE_FOR[state] == states.TRANSITIONS[(state, "fail")]
    for state in states.ACTIVE_WORK_STATES - {"deleting"}:
        assert states.target_of(state) is not None, state


def test_stable_states_have_no_target() -> None:
    for state in states.STABLE_STATES | states.FAILED_STATES:
        assert states.target_of(state) is None


def test_dot_is_generated_from_the_table() -> None:
    dot = states.to_dot()
    assert dot.count("->") == len(states.TRANSITIONS)
