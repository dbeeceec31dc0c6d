"""Agent push, as the desk shows it: what an agent can text a caller, and what
became of each page sent.

What can be sent (:func:`sendable`), from the session's own flow:

* every ``guide`` node (a short step-by-step guide written in the flow);
* the *open pages*: labelled ``menu`` and ``input`` nodes (the nodes with a
  page of their own: buttons, digit entry; an unlabelled node is an internal
  step) that a caller can reach from the start of the flow, or from its
  global keys, without passing a ``branch`` node. A branch is a decision on
  what the session knows (is the caller verified?), so a page behind one is
  never offered: a pushed page cannot skip a check. Nothing is followed past
  a ``transfer`` (a call-only step).

What became of a page (:func:`push_status`), from the shared database so any
server can answer: the link (texted to, by whom, when, opened when, ended
why), the ``sms`` event of that link (sent, or refused with the reason), and
the web events the page recorded, which carry the link's id (``data.link``):
pages visited, guide steps, choices, entries, done.

Texts are in both languages of the desk ("English / 中文"), so the page just
shows them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ivr.flow.model import Flow
from ivr.flow.nodes import BranchNode, InputDigitsNode, MenuNode, TransferNode
from visual_ivr.nodes import GuideNode, OfferVisualNode
from visual_ivr.phone import classify, mask_number

#: A contact that ended longer ago than this cannot be sent pages any more.
PUSH_WINDOW = dt.timedelta(hours=24)
#: Pages shown per session on the desk (newest first), and the latest lines of each.
MAX_SHOWN = 6
MAX_ACTIVITY = 40

REASONS = {
    "limit_session": ("SMS limit for this contact reached", "本次联系的短信已达上限"),
    "limit_number": ("SMS limit for this number reached (per hour)", "该号码每小时短信已达上限"),
    "limit_hour": ("the server's hourly SMS limit is reached", "系统每小时短信已达上限"),
    "not_mobile": ("the caller's number is not a mobile", "来电号码不是手机号码"),
    "no_state": ("the contact has no state to continue from yet", "该联系尚无可继续的状态"),
    "too_old": ("the contact ended more than 24 hours ago", "该联系已结束超过24小时"),
    "no_flow": ("the contact's flow is not loaded", "该联系的流程未加载"),
    "no_pages": ("the flow has no pages to send", "该流程没有可发送的页面"),
    "failed": ("the SMS gateway did not take the message", "短信网关发送失败"),
}

STATES = {
    "texted": ("texted", "已发送短信"),
    "refused": ("not sent", "未发送"),
    "failed": ("not sent", "发送失败"),
    "opened": ("opened", "已打开"),
    "done": ("done", "已完成"),
    "ended": ("closed", "已结束"),
    "expired": ("expired, not opened", "已过期，未打开"),
}


def both(en: str, zh: str) -> str:
    return f"{en} / {zh}"


def reason_text(code: str | None) -> str:
    if not code:
        return ""
    en, zh = REASONS.get(code, (code.replace("_", " "), code.replace("_", " ")))
    return both(en, zh)


def flow_text(flow: Flow, value: Any) -> str:
    """A flow text in each of the flow's languages (distinct ones), ``" / "``-joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    seen: list[str] = []
    for lang in flow.languages:
        text = flow.text(value, lang)
        if text and text not in seen:
            seen.append(text)
    return " / ".join(seen)


def node_label(flow: Flow, node_id: str | None) -> str:
    node = flow.nodes.get(node_id or "")
    if node is None:
        return node_id or ""
    if isinstance(node, GuideNode):
        return flow_text(flow, node.label or node.title)
    return flow_text(flow, node.label) or node_id or ""


def has_page(flow: Flow, node_id: str | None) -> bool:
    node = flow.nodes.get(node_id or "")
    return isinstance(node, GuideNode) or (isinstance(node, (MenuNode, InputDigitsNode)) and bool(node.label))


def open_nodes(flow: Flow) -> set[str]:
    """Nodes reachable from the start (and the global keys) without passing a branch or a transfer."""
    todo = [flow.start, *(str(t) for t in flow.settings.global_keys.values())]
    seen: set[str] = set()
    while todo:
        node_id = todo.pop()
        node = flow.nodes.get(node_id)
        if node is None or node_id in seen:
            continue
        seen.add(node_id)
        if isinstance(node, (BranchNode, TransferNode)):
            continue
        todo.extend(target for _, target in node.targets())
    return seen


def sendable(flow: Flow) -> list[dict[str, Any]]:
    """What an agent may text from this flow: guides first, then open pages, in flow order."""
    reachable = open_nodes(flow)
    guides, pages = [], []
    for node_id, node in flow.nodes.items():
        if isinstance(node, GuideNode):
            guides.append({"node": node_id, "kind": "guide", "type": node.type, "steps": len(node.steps),
                           "label": node_label(flow, node_id), "title": flow_text(flow, node.title)})
        elif has_page(flow, node_id) and node_id in reachable:
            pages.append({"node": node_id, "kind": "page", "type": node.type, "label": node_label(flow, node_id)})
    return guides + pages


def flow_of(app: Any, session: dict[str, Any]) -> Flow | None:
    state = session.get("state") or {}
    registry = app.registry
    for flow_id, version in ((state.get("flow"), state.get("version")), (state.get("flow"), None),
                             (session.get("flow_id"), None)):
        if not flow_id:
            continue
        try:
            return registry.get(flow_id, version) if version else registry.get(flow_id)
        except Exception:  # noqa: BLE001 - an unknown flow or version: try the next
            continue
    return None


def region_of(flow: Flow | None) -> str:
    if flow is not None:
        for node in flow.nodes.values():
            if isinstance(node, OfferVisualNode):
                return node.region
    return "CN"


def _parse(iso: Any) -> dt.datetime | None:
    if isinstance(iso, dt.datetime):
        value = iso
    elif isinstance(iso, str) and iso:
        try:
            value = dt.datetime.fromisoformat(iso)
        except ValueError:
            return None
    else:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def refusal(session: dict[str, Any], flow: Flow | None, number: str | None = None) -> str | None:
    """Why nothing can be sent to this contact now (a :data:`REASONS` code), or None."""
    if flow is None:
        return "no_flow"
    if not session.get("state"):
        return "no_state"
    ended = _parse(session.get("ended_at"))
    if ended is not None and dt.datetime.now(dt.timezone.utc) - ended > PUSH_WINDOW:
        return "too_old"
    if not classify(number or session.get("caller"), region_of(flow)).is_mobile:
        return "not_mobile"
    return None


# ------------------------------------------------------------------ what became of a page
def describe(flow: Flow | None, event: dict[str, Any]) -> str | None:
    """One line (both languages) for a web event of a pushed page; None: not shown."""
    kind, d, node = event["kind"], event.get("data") or {}, event.get("node")
    if kind == "web_open":
        return both("opened the page", "打开了页面")
    if kind == "node_enter":
        if flow is None or not has_page(flow, node) or isinstance(flow.nodes.get(node or ""), GuideNode):
            return None
        return f"→ {node_label(flow, node)}"
    if kind == "guide_step":
        i, n = d.get("step"), d.get("of")
        return both(f"step {i} of {n}", f"第{i}步（共{n}步）")
    if kind == "guide_done":
        return both("finished the guide", "完成了指南") + " ✓"
    if kind == "choice":
        label = d.get("label") or d.get("key")
        return both(f"tapped “{label}”", f"点选了“{label}”")
    if kind == "input_ok":
        return both("entered digits", "输入了号码")
    if kind == "input_invalid":
        return both(f"entry refused ({d.get('reason')})", f"输入无效（{d.get('reason')}）")
    if kind == "lookup":
        ok = bool(d.get("ok"))
        return both(f"look-up {d.get('name')}: {'ok' if ok else 'failed'}",
                    f"查询{d.get('name')}：{'成功' if ok else '失败'}")
    if kind == "transfer":
        return both("asked for a person", "要求人工服务")
    if kind == "callback_requested":
        return both("asked for a callback", "预约了回电") if d.get("ok", True) else None
    if kind == "moved":
        return both("call moved to the queue", "通话已转入队列") if d.get("ok") else None
    if kind == "session_end":
        return both(f"ended ({d.get('outcome')})", f"已结束（{d.get('outcome')}）")
    return None


def link_status(flow: Flow | None, link: Any, events: list[dict[str, Any]],
                now: dt.datetime | None = None) -> dict[str, Any]:
    """The desk's view of one pushed link (``link``: a :class:`visual_ivr.links.Link`)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    mine = [e for e in events if (e.get("data") or {}).get("link") == link.id]
    sms = next((e["data"] for e in mine if e["kind"] == "sms"), None)
    web = [e for e in mine if e["channel"] == "web" and e["kind"] != "sms"]
    activity = []
    for e in web:
        text = describe(flow, e)
        if text:
            activity.append({"at": e["at"], "kind": e["kind"], "node": e["node"], "text": text})
    guide = flow.nodes.get(link.node) if flow is not None else None
    steps = None
    if isinstance(guide, GuideNode):
        seen = sorted({int(e["data"]["step"]) for e in web if e["kind"] == "guide_step" and e["node"] == link.node
                       and isinstance((e.get("data") or {}).get("step"), int)})
        steps = {"of": len(guide.steps), "seen": seen,
                 "finished": any(e["kind"] == "guide_done" and e["node"] == link.node for e in web)}
    finish = next((e for e in web if e["kind"] in ("guide_done", "session_end") and
                   (e["kind"] == "session_end" or e["node"] == link.node)), None)
    done = finish is not None
    if sms is not None:
        sms_status = str(sms.get("status"))
    elif str(link.end_reason or "").startswith("sms "):  # the event is not written yet
        sms_status = str(link.end_reason)[4:]
    else:
        sms_status = "sent"
    if sms_status == "refused":
        state = "refused"
    elif sms_status != "sent":
        state = "failed"
    elif done:
        state = "done"
    elif link.opened_at is not None:
        state = "ended" if link.ended_at is not None else "opened"
    elif link.expires_at <= now or link.ended_at is not None:
        state = "expired"
    else:
        state = "texted"
    reason = (sms or {}).get("reason")
    if state == "failed" and not reason:
        reason = "failed"
    return {
        "link": link.id,
        "node": link.node,
        "label": node_label(flow, link.node) if flow is not None else link.node,
        "kind": "guide" if steps is not None else "page",
        "language": link.language,
        "by": link.created_by,
        "to": link.to_masked,
        "sent_at": link.created_at.isoformat(),
        "expires_at": link.expires_at.isoformat(),
        "opened_at": link.opened_at.isoformat() if link.opened_at else None,
        "ended_at": link.ended_at.isoformat() if link.ended_at else None,
        "end_reason": link.end_reason,
        "sms": sms_status,
        "reason": reason,
        "reason_text": reason_text(reason) if state in ("refused", "failed") else "",
        "state": state,
        "state_text": both(*STATES[state]),
        "steps": steps,
        "done": done,
        "done_at": finish["at"] if finish is not None else None,
        "activity": activity[-MAX_ACTIVITY:],
        "activity_total": len(activity),
    }


async def push_panel(app: Any, session: dict[str, Any] | None, events: list[dict[str, Any]] | None = None,
                     ) -> dict[str, Any]:
    """The pop's "Send a page" section: what can be sent, and each page sent (newest first)."""
    hub = getattr(getattr(app, "driver", None), "visual_hub", None)
    if session is None or hub is None:
        return {"available": False, "why": None, "pages": [], "sent": []}
    flow = flow_of(app, session)
    why = refusal(session, flow)
    pages = sendable(flow) if flow is not None else []
    if why is None and not pages:
        why = "no_pages"
    sid = session["id"]
    links = [link for link in await hub.links.for_session(sid) if link.kind == "push"]
    if links and events is None:
        events = await app.store.events(sid)
    sent = [link_status(flow, link, events or []) for link in reversed(links[-MAX_SHOWN:])]
    line = classify(session.get("caller"), region_of(flow))
    languages = list(flow.languages) if flow is not None else []
    language = (session.get("state") or {}).get("lang") or session.get("language")
    return {
        "available": flow is not None and bool(pages),
        "can_send": why is None,
        "why": why,
        "why_text": reason_text(why),
        "to": mask_number(line.e164) if line.e164 else None,
        "languages": languages,
        "language": language if language in languages else (languages[0] if languages else None),
        "pages": pages,
        "sent": sent,
    }


async def push_status(app: Any, session_id: str) -> dict[str, Any] | None:
    """:func:`push_panel` of a session by id (None: no such session)."""
    session = await app.store.get_session(session_id)
    if session is None:
        return None
    return await push_panel(app, session)
