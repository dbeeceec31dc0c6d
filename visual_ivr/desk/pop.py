"""What an agent's screen shows for a session: the screen pop.

Built from the shared database (so any server can build it): the session,
its whole trail as a readable timeline (voice, web and speech events, with
utterances and confidence), the caller's previous contacts, callbacks, and
why they came to a person. Identity data is masked.
"""

from __future__ import annotations

from typing import Any

from ivr.flow import expr
from ivr.store.summary import build_summary, person_reason

# Trail kinds that say nothing to a person reading the timeline.
QUIET = {"node_enter", "var_set", "branch", "input", "input_ok", "hours", "session_end_internal"}


def mask_name(name: Any) -> str | None:
    """``张伟`` -> ``张*``; ``Zhang Wei`` -> ``Z*** W**``."""
    if not name:
        return None
    text = str(name).strip()
    if " " in text:
        return " ".join(part[:1] + "*" * (len(part) - 1) for part in text.split())
    return text[:1] + "*" * max(1, len(text) - 1)


def _conf(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return "?"


def describe(event: dict[str, Any]) -> str | None:
    """One line of English for a trail event (None: not shown)."""
    kind, d = event["kind"], event.get("data") or {}
    if kind == "session_start":
        return f"Contact started on {d.get('channel', event.get('channel'))} ({d.get('lang', '')})"
    if kind == "prompt":
        return f"IVR said: {d.get('text', '')}"
    if kind == "choice":
        how = ""
        if d.get("mode") == "speech":
            how = f" by voice: “{d.get('utterance') or ''}” (confidence {_conf(d.get('confidence'))})"
        elif d.get("mode") == "tap":
            how = " on screen"
        else:
            how = f" (key {d.get('key')})"
        return f"Chose “{d.get('label', d.get('key'))}”{how}"
    if kind == "speech":
        text = d.get("utterance") or d.get("text") or ""
        result = f" → {d['choice']}" if d.get("choice") else ""
        return f"Said “{text}” (confidence {_conf(d.get('confidence'))}){result}" + (
            f" [{d['reason']}]" if d.get("reason") else "")
    if kind == "language":
        return f"Language: {d.get('language')}"
    if kind == "noinput":
        return "No answer"
    if kind == "nomatch":
        return f"Not understood ({d.get('reason', '')})"
    if kind == "global_key":
        return f"Pressed {d.get('key')}: {d.get('meaning')}"
    if kind == "lookup":
        return f"Look-up {d.get('name')}: {'ok' if d.get('ok') else 'failed'}" + (
            f" ({d.get('error')})" if d.get("error") else "")
    if kind == "summary":
        return f"✓ {d.get('text')}"
    if kind == "failure":
        return f"Gave up after {d.get('tries')} tries"
    if kind == "transfer":
        target = f"queue {d['queue']}" if d.get("queue") else f"extension {d.get('extension')}"
        return f"Asked for a person → {target} (priority {d.get('priority', 0)}): {d.get('reason') or ''}"
    if kind == "transfer_result":
        return f"Transfer: {d.get('status')}" + (f", talked {d['talk_seconds']} s" if d.get("talk_seconds") else "")
    if kind == "queue_wait":
        wait = f", about {d['wait_minutes']} min" if d.get("wait_minutes") else ""
        return f"Queue {d.get('queue')}: position {d.get('position')}{wait}"
    if kind == "agent_connect":
        return f"Answered by {d.get('agent')} ({d.get('interface')})"
    if kind == "survey":
        if d.get("skipped"):
            return "Survey: no answer"
        extra = f" by voice “{d.get('utterance')}” ({_conf(d.get('confidence'))})" if d.get("mode") == "speech" else ""
        return f"Survey: {d.get('score')}/{d.get('scale')}{extra}"
    if kind == "callback_requested":
        if d.get("ok") is False:
            return f"Callback not taken: {d.get('reason')}"
        return f"Callback requested ({d.get('slot')}) to {d.get('number')}, queue {d.get('queue')}"
    if kind == "callback_attempt":
        return f"Callback attempt {d.get('attempt')}/{d.get('of')} ({d.get('mode')})"
    if kind == "callback_result":
        cause = f", cause {d['cause']} {d.get('cause_txt', '')}" if d.get("cause") is not None and "cause" in d else ""
        return f"Callback {d.get('outcome')}{cause}" + (f": {d['reason']}" if d.get("reason") else "")
    if kind == "record":
        return f"Left a message ({d.get('seconds')} s): {d.get('transcript') or ''}"
    if kind == "sms":
        return f"SMS to {d.get('to')}: {d.get('status')}"
    if kind == "web_push":
        return f"{d.get('agent')} texted a page: {d.get('node')}"
    if kind == "guide_step":
        return f"Guide step {d.get('step')} of {d.get('of')}"
    if kind == "guide_done":
        return f"Finished the guide ({d.get('steps')} steps)"
    if kind in ("web_open", "web"):
        return f"Opened the visual menu ({d.get('how') or d.get('node') or ''})"
    if kind == "moved":
        return f"Moved to queue {d.get('queue')}"
    if kind == "disposition":
        return f"Disposition by {d.get('agent')}: {d.get('disposition')}" + (
            f" — {d['notes']}" if d.get("notes") else "")
    if kind == "hangup":
        return "Caller hung up"
    if kind == "session_end":
        return f"Contact ended: {d.get('outcome')}"
    if kind == "error":
        return f"Error at {d.get('where')}"
    if kind in QUIET:
        return None
    return kind.replace("_", " ")


def timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        text = describe(e)
        if text is None:
            continue
        d = e.get("data") or {}
        item = {"seq": e.get("seq"), "at": e.get("at"), "channel": e.get("channel"), "kind": e["kind"],
                "node": e.get("node"), "text": text}
        if d.get("confidence") is not None and (d.get("mode") == "speech" or e["kind"] == "speech"):
            item["confidence"] = d.get("confidence")
        out.append(item)
    return out


def identity(variables: dict[str, Any] | None) -> dict[str, Any]:
    v = variables or {}
    account = v.get("account") or v.get("known_account")
    return {
        "verified": bool(v.get("verified")),
        "account": expr.mask(account) if account else None,
        "name": mask_name(v.get("name") or v.get("name_en")),
        "tier": v.get("tier"),
    }


async def build_pop(app: Any, session_id: str, offer: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from callback.api import list_callbacks
    from visual_ivr.push import push_panel

    store = app.store
    session = await store.get_session(session_id)
    if session is None:
        return None
    events = await store.events(session_id)
    previous = await store.previous_contacts(session["caller"], exclude=session_id, limit=5)
    state = session.get("state") or {}
    transfer_reason = next((e["data"].get("reason") for e in reversed(events) if e["kind"] == "transfer"), None)
    reason = session.get("reason") or state.get("reason") or transfer_reason or person_reason(events)
    agent = next((e["data"] for e in reversed(events) if e["kind"] == "agent_connect"), None)
    callbacks = await list_callbacks(app, session_id=session_id, limit=5)
    push = await push_panel(app, session, events)
    return {
        "session_id": session_id,
        "caller": session["caller"],
        "dialed": session["dialed"],
        "language": session["language"],
        "flow_id": session["flow_id"],
        "channel": session["channel"],
        "started_at": session["started_at"],
        "live": session["live"],
        "outcome": session["outcome"],
        "summary": session.get("summary") or build_summary(events),
        "reason": reason,
        # a live session's variables are in its latest state (saved before the transfer)
        "identity": identity({**(session.get("variables") or {}), **(state.get("vars") or {})}),
        "agent": agent,
        "timeline": timeline(events),
        "previous": [{"id": p["id"], "started_at": p["started_at"], "channel": p["channel"],
                      "outcome": p["outcome"], "summary": p["summary"], "agent": p.get("agent")} for p in previous],
        "callbacks": [{"id": c["id"], "when": c["when"], "status": c["status"], "attempts": c["attempts"],
                       "last_outcome": c["last_outcome"], "number": expr.mask(c["number"])} for c in callbacks],
        "offer": offer,
        "push": push,  # "Send a page": what can be texted, and each page sent
    }
