"""The node provision state machine, as data.

Rules of this module:
1. Every edge a node can take lives in TRANSITIONS. Code never assigns a provision state it did not get
   from `advance()`, so this table is the whole truth (and `bootforge states --dot` draws it).
2. States are Ironic's strings, byte for byte: the `baremetal` CLI, openstacksdk and operators' scripts
   compare against them.
3. A transient state names the stable state it is heading for (TARGETS); the API shows it as
   `target_provision_state` while the node is on its way.

Theory: an API verb becomes an event (VERB_EVENTS); `advance(state, event)` either returns the next state
or raises InvalidStateTransition naming the state and the verb, which the API turns into a 409.
"""

from __future__ import annotations

from typing import Final

from bootforge.errors import InvalidStateTransition

ENROLL: Final = "enroll"
VERIFYING: Final = "verifying"
MANAGEABLE: Final = "manageable"
AVAILABLE: Final = "available"
ACTIVE: Final = "active"
DEPLOYING: Final = "deploying"
DEPLOYWAIT: Final = "wait call-back"
DEPLOYFAIL: Final = "deploy failed"
DEPLOYHOLD: Final = "deploy hold"
DELETING: Final = "deleting"
CLEANING: Final = "cleaning"
CLEANWAIT: Final = "clean wait"
CLEANFAIL: Final = "clean failed"
CLEANHOLD: Final = "clean hold"
ERROR: Final = "error"
INSPECTING: Final = "inspecting"
INSPECTWAIT: Final = "inspect wait"
INSPECTFAIL: Final = "inspect failed"
ADOPTING: Final = "adopting"
ADOPTFAIL: Final = "adopt failed"
RESCUE: Final = "rescue"
RESCUING: Final = "rescuing"
RESCUEWAIT: Final = "rescue wait"
RESCUEFAIL: Final = "rescue failed"
UNRESCUING: Final = "unrescuing"
UNRESCUEFAIL: Final = "unrescue failed"

STABLE_STATES: Final = frozenset({ENROLL, MANAGEABLE, AVAILABLE, ACTIVE, ERROR, RESCUE})

FAILED_STATES: Final = frozenset(
    {DEPLOYFAIL, CLEANFAIL, INSPECTFAIL, ADOPTFAIL, RESCUEFAIL, UNRESCUEFAIL, ERROR}
)

# The states in which an agent waits for the conductor, each with the timeout setting that bounds it.
WAIT_STATES: Final = frozenset({DEPLOYWAIT, CLEANWAIT, INSPECTWAIT, RESCUEWAIT})

# Where a transient state is heading; shown as target_provision_state.
TARGETS: Final[dict[str, str]] = {
    VERIFYING: MANAGEABLE,
    DEPLOYING: ACTIVE,
    DEPLOYWAIT: ACTIVE,
    DEPLOYHOLD: ACTIVE,
    DELETING: AVAILABLE,
    CLEANING: AVAILABLE,
    CLEANWAIT: AVAILABLE,
    CLEANHOLD: AVAILABLE,
    INSPECTING: MANAGEABLE,
    INSPECTWAIT: MANAGEABLE,
    ADOPTING: ACTIVE,
    RESCUING: RESCUE,
    RESCUEWAIT: RESCUE,
    UNRESCUING: ACTIVE,
}

# (state, event) -> next state. Events are the conductor's words; API verbs map onto them below.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    # enrolment and verification of BMC access
    (ENROLL, "manage"): VERIFYING,
    (VERIFYING, "done"): MANAGEABLE,
    (VERIFYING, "fail"): ENROLL,
    # manageable <-> available
    (AVAILABLE, "manage"): MANAGEABLE,
    (MANAGEABLE, "provide"): CLEANING,
    (CLEANING, "done"): AVAILABLE,
    # manual cleaning returns to manageable: the service passes the event "manage" at its end
    (MANAGEABLE, "clean"): CLEANING,
    (CLEANING, "manage"): MANAGEABLE,
    (CLEANING, "wait"): CLEANWAIT,
    (CLEANWAIT, "resume"): CLEANING,
    (CLEANING, "fail"): CLEANFAIL,
    (CLEANWAIT, "fail"): CLEANFAIL,
    (CLEANWAIT, "abort"): CLEANFAIL,
    (CLEANING, "hold"): CLEANHOLD,
    (CLEANWAIT, "hold"): CLEANHOLD,
    (CLEANHOLD, "unhold"): CLEANWAIT,
    (CLEANHOLD, "abort"): CLEANFAIL,
    (CLEANFAIL, "manage"): MANAGEABLE,
    # inspection
    (MANAGEABLE, "inspect"): INSPECTING,
    (INSPECTFAIL, "inspect"): INSPECTING,
    (INSPECTING, "done"): MANAGEABLE,
    (INSPECTING, "wait"): INSPECTWAIT,
    (INSPECTWAIT, "resume"): INSPECTING,
    (INSPECTWAIT, "done"): MANAGEABLE,
    (INSPECTING, "fail"): INSPECTFAIL,
    (INSPECTWAIT, "fail"): INSPECTFAIL,
    (INSPECTWAIT, "abort"): INSPECTFAIL,
    (INSPECTFAIL, "manage"): MANAGEABLE,
    # deployment
    (AVAILABLE, "deploy"): DEPLOYING,
    (DEPLOYFAIL, "deploy"): DEPLOYING,
    (ACTIVE, "rebuild"): DEPLOYING,
    (DEPLOYFAIL, "rebuild"): DEPLOYING,
    (ERROR, "rebuild"): DEPLOYING,
    (DEPLOYING, "done"): ACTIVE,
    (DEPLOYING, "wait"): DEPLOYWAIT,
    (DEPLOYWAIT, "resume"): DEPLOYING,
    (DEPLOYING, "fail"): DEPLOYFAIL,
    (DEPLOYWAIT, "fail"): DEPLOYFAIL,
    (DEPLOYWAIT, "abort"): DEPLOYFAIL,
    (DEPLOYING, "hold"): DEPLOYHOLD,
    (DEPLOYWAIT, "hold"): DEPLOYHOLD,
    (DEPLOYHOLD, "unhold"): DEPLOYWAIT,
    (DEPLOYHOLD, "abort"): DEPLOYFAIL,
    # tear down; automated cleaning follows through the internal "clean" event
    (ACTIVE, "delete"): DELETING,
    (DEPLOYWAIT, "delete"): DELETING,
    (DEPLOYFAIL, "delete"): DELETING,
    (ERROR, "delete"): DELETING,
    (RESCUE, "delete"): DELETING,
    (RESCUEWAIT, "delete"): DELETING,
    (RESCUEFAIL, "delete"): DELETING,
    (UNRESCUEFAIL, "delete"): DELETING,
    (DELETING, "clean"): CLEANING,
    (DELETING, "fail"): ERROR,
    # adoption of machines deployed by other means
    (MANAGEABLE, "adopt"): ADOPTING,
    (ADOPTFAIL, "adopt"): ADOPTING,
    (ADOPTING, "done"): ACTIVE,
    (ADOPTING, "fail"): ADOPTFAIL,
    (ADOPTFAIL, "manage"): MANAGEABLE,
    # rescue
    (ACTIVE, "rescue"): RESCUING,
    (RESCUE, "rescue"): RESCUING,
    (RESCUEFAIL, "rescue"): RESCUING,
    (UNRESCUEFAIL, "rescue"): RESCUING,
    (RESCUING, "wait"): RESCUEWAIT,
    (RESCUEWAIT, "resume"): RESCUING,
    (RESCUING, "done"): RESCUE,
    (RESCUEWAIT, "done"): RESCUE,
    (RESCUING, "fail"): RESCUEFAIL,
    (RESCUEWAIT, "fail"): RESCUEFAIL,
    (RESCUEWAIT, "abort"): RESCUEFAIL,
    (RESCUE, "unrescue"): UNRESCUING,
    (RESCUEFAIL, "unrescue"): UNRESCUING,
    (UNRESCUEFAIL, "unrescue"): UNRESCUING,
    (UNRESCUING, "done"): ACTIVE,
    (UNRESCUING, "fail"): UNRESCUEFAIL,
}

# API verb (PUT /v1/nodes/{id}/states/provision {"target": verb}) -> state machine event.
VERB_EVENTS: Final[dict[str, str]] = {
    "manage": "manage",
    "provide": "provide",
    "inspect": "inspect",
    "clean": "clean",
    "active": "deploy",
    "deploy": "deploy",
    "rebuild": "rebuild",
    "deleted": "delete",
    "undeploy": "delete",
    "abort": "abort",
    "rescue": "rescue",
    "unrescue": "unrescue",
    "adopt": "adopt",
    "unhold": "unhold",
}

# States a node may be deleted in (Ironic's DELETE_ALLOWED_STATES plus available: an operator
# retiring an idle machine should not have to manage it first).
DELETE_ALLOWED_STATES: Final = frozenset({ENROLL, MANAGEABLE, AVAILABLE, ADOPTFAIL})

# States whose work runs in the conductor; a conductor that died mid-way left the node here.
ACTIVE_WORK_STATES: Final = frozenset(
    {VERIFYING, DEPLOYING, CLEANING, INSPECTING, ADOPTING, RESCUING, UNRESCUING, DELETING}
)

FAIL_STATE_FOR: Final[dict[str, str]] = {
    VERIFYING: ENROLL,
    DEPLOYING: DEPLOYFAIL,
    DEPLOYWAIT: DEPLOYFAIL,
    CLEANING: CLEANFAIL,
    CLEANWAIT: CLEANFAIL,
    INSPECTING: INSPECTFAIL,
    INSPECTWAIT: INSPECTFAIL,
    ADOPTING: ADOPTFAIL,
    RESCUING: RESCUEFAIL,
    RESCUEWAIT: RESCUEFAIL,
    UNRESCUING: UNRESCUEFAIL,
    DELETING: ERROR,
}

ALL_STATES: Final = frozenset(s for edge in TRANSITIONS for s in (edge[0], TRANSITIONS[edge]))


def advance(state: str, event: str, *, verb: str | None = None) -> str:
    """Return the state that `event` leads to from `state`, or raise InvalidStateTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        action = verb or event
        raise InvalidStateTransition(
            f'The requested action "{action}" can not be performed on node while it is in state "{state}".'
        ) from None


def target_of(state: str) -> str | None:
    """The stable state a transient state is heading for; None for stable and failed states."""
    return TARGETS.get(state)


def allowed_verbs(state: str) -> list[str]:
    """The API verbs accepted in `state`, for error messages and the CLI."""
    return sorted(v for v, e in VERB_EVENTS.items() if (state, e) in TRANSITIONS)


def to_dot() -> str:
    """Graphviz source of the machine, generated from TRANSITIONS so the picture cannot drift."""
    lines = ["digraph provision_states {", "  rankdir=LR;"]
    for s in sorted(STABLE_STATES):
        lines.append(f'  "{s}" [shape=box, style=bold];')
    for (src, event), dst in sorted(TRANSITIONS.items()):
        lines.append(f'  "{src}" -> "{dst}" [label="{event}"];')
    lines.append("}")
    return "\n".join(lines)
