"""bootforge's own node resources for operators (Ironic has neither), authenticated like the rest:

- GET /v1/nodes/{ident}/diagnosis: where the node's boot or deploy stands or stopped, and the likely
  cause, read from its state and timeline (bootforge.conductor.diagnosis); `bootforge node why`.
- GET /v1/nodes/{ident}/progress: the current step and what the agent last reported of its command
  (done / total, e.g. bytes written); what `node deploy --wait` shows. Cheap: one node row and one
  agent session row, for polling.

Both are reads: no lock is taken and nothing changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request

from bootforge.api.deps import ctx
from bootforge.api.responses import JSON
from bootforge.conductor import diagnosis, reads
from bootforge.conductor.conductor import WAIT_TIMEOUT_SETTING
from bootforge.conductor.task import load_node
from bootforge.db.models import AgentSession, Node, NodeEvent
from bootforge.drivers.agent import AGENT_BOOT, AGENT_COMMAND

router = APIRouter(prefix="/v1/nodes/{ident}")

# Timeline events read for a diagnosis: a whole ramdisk boot with a DHCP storm's summaries fits.
EVENTS_READ = 500


@router.get("/diagnosis")
async def diagnose(request: Request, ident: str) -> JSON:
    c = ctx(request)
    conductor = c.services.conductor
    node = await load_node(conductor, ident)
    rows = await reads.node_events_newest(conductor.db, node.id, EVENTS_READ)
    session = await reads.agent_session(conductor.db, node.id)
    limit = WAIT_TIMEOUT_SETTING.get(node.provision_state)
    facts = diagnosis.NodeFacts(
        uuid=node.uuid,
        name=node.name,
        provision_state=node.provision_state,
        target_provision_state=node.target_provision_state,
        power_state=node.power_state,
        last_error=node.last_error,
        maintenance=node.maintenance,
        maintenance_reason=node.maintenance_reason,
        fault=node.fault,
        provision_updated_at=_aware(node.provision_updated_at),
        agent_boot=_str(node.driver_internal_info.get(AGENT_BOOT)),
        agent_command=_command(node).get("name"),
        wait_timeout=float(getattr(conductor.settings, limit)) if limit else None,
        netboot=conductor.drivers.boots_from_network(node.driver, node.boot_interface),
    )
    events = [_event(r) for r in rows]
    agent = _agent(session)
    verdict = diagnosis.diagnose(
        facts, events, dt.datetime.now(dt.UTC), agent, quiet=conductor.settings.diagnosis_quiet
    )
    return JSON(
        {
            "node_uuid": node.uuid,
            "name": node.name,
            "provision_state": node.provision_state,
            "target_provision_state": node.target_provision_state,
            "power_state": node.power_state,
            "maintenance": node.maintenance,
            "last_error": node.last_error,
            "status": verdict.status,
            "wrong": verdict.wrong,
            "stage": verdict.stage,
            "summary": verdict.summary,
            "cause": verdict.cause,
            "failing_event": _event_dict(verdict.failing_event) if verdict.failing_event else None,
            "evidence": [_event_dict(e) for e in verdict.evidence],
            "agent": _agent_dict(node, session),
        }
    )


@router.get("/progress")
async def progress(request: Request, ident: str) -> JSON:
    conductor = ctx(request).services.conductor
    node = await load_node(conductor, ident)
    session = await reads.agent_session(conductor.db, node.id)
    return JSON(
        {
            "node_uuid": node.uuid,
            "name": node.name,
            "provision_state": node.provision_state,
            "target_provision_state": node.target_provision_state,
            "reservation": node.reservation,
            "last_error": node.last_error,
            "step": _step(node),
            "agent": _agent_dict(node, session),
        }
    )


def _step(node: Node) -> dict[str, Any] | None:
    """The deploy or clean step running now, with its place in the step list."""
    internal = node.driver_internal_info
    for kind, step in (("deploy", node.deploy_step), ("clean", node.clean_step)):
        if step:
            steps = internal.get(f"{kind}_steps") or []
            index = internal.get(f"{kind}_step_index")
            # A step that waits for the agent has its index moved past it already (conductor/work.py).
            names = [f"{s.get('interface')}.{s.get('step')}" for s in steps if isinstance(s, dict)]
            name = f"{step.get('interface')}.{step.get('step')}"
            position = names.index(name) + 1 if name in names else (index or 0) + 1
            return {"kind": kind, "name": name, "number": position, "count": len(names) or None}
    return None


def _agent_dict(node: Node, session: AgentSession | None) -> dict[str, Any] | None:
    """The agent of the node's current ramdisk boot and its current command's last progress report."""
    boot = node.driver_internal_info.get(AGENT_BOOT)
    if session is None or not boot or session.boot_id != boot:
        return None
    command = _command(node)
    current = bool(command) and session.command_id == command.get("id")
    progress = session.progress if current and isinstance(session.progress, dict) else {}
    return {
        "address": session.agent_address,
        "looked_up_at": session.issued_at,
        "last_seen": session.last_seen,
        "command": command.get("name") if command else None,
        "status": session.command_status if current else ("waiting" if command else None),
        "done": _int(progress.get("done")),
        "total": _int(progress.get("total")),
        "message": str(progress["message"]) if progress.get("message") is not None else None,
    }


def _command(node: Node) -> dict[str, Any]:
    command = node.driver_internal_info.get(AGENT_COMMAND)
    return command if isinstance(command, dict) else {}


def _agent(session: AgentSession | None) -> diagnosis.AgentFacts | None:
    if session is None:
        return None
    return diagnosis.AgentFacts(
        boot_id=session.boot_id,
        issued_at=_aware(session.issued_at) or dt.datetime.now(dt.UTC),
        last_seen=_aware(session.last_seen) or dt.datetime.now(dt.UTC),
        command_status=session.command_status,
        error=session.error,
        progress=session.progress if isinstance(session.progress, dict) else {},
    )


def _event(r: NodeEvent) -> diagnosis.Event:
    return diagnosis.Event(
        id=r.id,
        uuid=r.uuid,
        at=_aware(r.created_at) or dt.datetime.now(dt.UTC),
        source=r.event_type,
        severity=r.severity,
        message=r.event,
        network_boot=bool(r.network_boot),
    )


def _event_dict(e: diagnosis.Event) -> dict[str, Any]:
    return {
        "uuid": e.uuid,
        "created_at": e.at,
        "event_type": e.source,
        "severity": e.severity,
        "event": e.message,
        "network_boot": e.network_boot,
    }


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    # SQLite gives naive datetimes back; bootforge writes UTC.
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _str(value: Any) -> str | None:
    return str(value) if value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
