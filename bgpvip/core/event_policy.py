"""Which Kubernetes Events a change of decisions is worth: one policy for the speaker and the
controller.

Pure side of the line. Events are an observer of decisions, like the status board: a program
decides, then shows the old and the new decisions about an object (a Service) to this module,
which says what to post. Each program describes every subject of the object (one of its
addresses, or the Service as a whole) by a `Fact`:

- ON: the subject is in effect (announced from this node; shown in the Service's status);
- OFF: it is not, for a reason that is nobody's mistake (no local endpoints, node drained, an
  address released);
- REFUSED: what the Service asks for cannot be done, and somebody has to change something.

`changes()` is the whole policy:

- a refusal is news when it is new or explained differently, always, even when the observer
  has just started. Whether an Event saying the same is already in the API (posted before a
  restart, or by another controller replica before a takeover) is nothing the decisions know:
  the recorder (`bgpvip.adapters.kube.events`) lists its component's recent Events when it
  starts and counts on them instead of posting again, so that rule lives there;
- ON is news when the subject was not ON, except when the observer has just started (`before`
  is None): a speaker start is not news about every Service (it would be one API write per
  Service and node), only its refusals are;
- OFF is news after ON only: OFF after OFF changes nothing, and after a refusal the refusal
  already said why;
- a subject that is gone says nothing: the Service, or that address of it, is gone.

`speaker_events`, `refusal_events` and `status_events` word the changes for each program.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bgpvip.core.alloc import Allocation, Outcome
from bgpvip.core.model import Decision, Reason


class Standing(enum.Enum):
    ON = "on"
    OFF = "off"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Fact:
    """What a decision says about one subject, as far as Events care."""

    standing: Standing
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    subject: str
    fact: Fact
    before: Fact | None
    """The subject's previous fact; None when it had none (new, or the observer just started)."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One Event to record about the object."""

    type: str
    """`Normal` or `Warning`."""
    reason: str
    message: str


def changes(before: Mapping[str, Fact] | None, after: Mapping[str, Fact]) -> tuple[Change, ...]:
    """The changes from `before` to `after` that are news, in `after`'s order. `before` is None
    when the observer has just started and knows nothing of earlier decisions."""
    out: list[Change] = []
    for subject, fact in after.items():
        old = None if before is None else before.get(subject)
        if fact.standing is Standing.REFUSED:
            news = old != fact
        elif before is None:
            news = False
        elif fact.standing is Standing.ON:
            news = old is None or old.standing is not Standing.ON
        else:
            news = old is not None and old.standing is Standing.ON
        if news:
            out.append(Change(subject, fact, old))
    return tuple(out)


# --------------------------------------------------------------------------- the speaker

SERVICE_REFUSALS = frozenset(
    {
        Reason.NOT_IN_POOL,
        Reason.POOL_NOT_ALLOWED,
        Reason.EXTERNAL_IP_NOT_ALLOWED,
        Reason.INVALID_ADDRESS,
        Reason.FAMILY_NOT_PEERED,
    }
)
"""The reasons a speaker does not announce a Service's address that only a person can fix: the
address is not one it may announce. Every other reason not to announce is the cluster's state."""


def speaker_facts(decisions: Iterable[Decision]) -> dict[str, Fact]:
    """A Service's decisions on one node, keyed by each address as the Service wrote it: two
    invalid entries are two subjects (their `address` is the same placeholder), and
    `::ffff:203.0.113.13` is shown as written."""
    out: dict[str, Fact] = {}
    for d in decisions:
        if d.announce:
            standing = Standing.ON
        elif d.reason in SERVICE_REFUSALS:
            standing = Standing.REFUSED
        else:
            standing = Standing.OFF
        out[d.written or str(d.address)] = Fact(standing, d.reason.value, d.detail)
    return out


def speaker_events(
    before: Iterable[Decision] | None, after: Iterable[Decision], *, node: str
) -> tuple[EventSpec, ...]:
    """The Events a speaker on `node` posts about one Service whose decisions changed from
    `before` (None: the speaker has just started) to `after`."""
    out: list[EventSpec] = []
    old = None if before is None else speaker_facts(before)
    for c in changes(old, speaker_facts(after)):
        f = c.fact
        shown = repr(c.subject)[:64] if f.reason == Reason.INVALID_ADDRESS else c.subject
        if f.standing is Standing.ON:
            out.append(EventSpec("Normal", "Announced", f"{shown} announced from node {node}"))
        elif f.standing is Standing.REFUSED:
            out.append(EventSpec("Warning", "Refused", f"{shown} not announced: {f.reason}: {f.detail}"))
        else:
            out.append(
                EventSpec(
                    "Normal", "Withdrawn", f"{shown} withdrawn from node {node}: {f.reason}: {f.detail}"
                )
            )
    return tuple(out)


# --------------------------------------------------------------------------- the controller


def _refusal(a: Allocation | None) -> dict[str, Fact]:
    if a is None or a.outcome is not Outcome.REFUSED:
        return {}
    return {"": Fact(Standing.REFUSED, a.reason.event_reason, a.message)}


def refusal_events(before: Allocation | None, after: Allocation) -> tuple[EventSpec, ...]:
    """A Warning when the allocation for a Service becomes a refusal, or a refusal for another
    reason. `before` is the previous allocation for the same Service object (None if none)."""
    return tuple(
        EventSpec("Warning", c.fact.reason, c.fact.detail) for c in changes(_refusal(before), _refusal(after))
    )


def status_events(
    before: Sequence[str], after: Sequence[str], allocation: Allocation
) -> tuple[EventSpec, ...]:
    """The Normal Event for a status write that changed a Service's addresses from `before` to
    `after`, as decided by `allocation`: `IPAllocated` when addresses were assigned (naming what
    was released with them), `IPReleased` when some were only taken away."""
    facts_before = {ip: Fact(Standing.ON) for ip in before}
    gone = Fact(Standing.OFF, allocation.reason.value, allocation.message)
    facts_after = {ip: Fact(Standing.ON) for ip in after} | {ip: gone for ip in before if ip not in after}
    news = changes(facts_before, facts_after)
    added = [c.subject for c in news if c.fact.standing is Standing.ON]
    removed = [c.subject for c in news if c.fact.standing is Standing.OFF]
    if added and allocation.assigned:
        message = f"Assigned {allocation.message}"
        if removed:
            message += f"; released {', '.join(removed)}"
        return (EventSpec("Normal", "IPAllocated", message),)
    if removed:
        # assigned, yet only removing: the first step of a move whose target was still held
        why = f"moving to {allocation.message}" if allocation.assigned else allocation.message
        return (EventSpec("Normal", "IPReleased", f"Released {', '.join(removed)}: {why}"),)
    return ()
