// Agent desk: a WebSocket that pops the caller's context. Every message is
// {body, mac}: body is JSON text {seq, type, data}, mac is HMAC-SHA256 of the
// body with this page's key. Messages with a bad mac or an old seq are refused.
// Needs a secure context (https, or localhost) for WebCrypto.
(function () {
  "use strict";
  var root = document.getElementById("desk");
  var cfg = root.dataset;
  var statusEl = document.getElementById("ws-status");
  var sendSeq = 0, recvSeq = 0, ws = null, keyPromise = null, current = null;
  window.deskStats = { pops: 0, refused: 0, lastPopAt: null, lastPopWall: null, lastSession: null, pushUpdates: 0 };

  function b64urlToBytes(text) {
    var s = text.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function bytesToB64url(buf) {
    var bytes = new Uint8Array(buf), bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function key() {
    if (!keyPromise) {
      keyPromise = crypto.subtle.importKey("raw", b64urlToBytes(cfg.wsKey), { name: "HMAC", hash: "SHA-256" },
        false, ["sign", "verify"]);
    }
    return keyPromise;
  }
  function mac(body) {
    return key().then(function (k) {
      return crypto.subtle.sign("HMAC", k, new TextEncoder().encode(body));
    }).then(bytesToB64url);
  }
  function send(type, data) {
    if (!ws || ws.readyState !== 1) return;
    sendSeq += 1;
    var body = JSON.stringify({ seq: sendSeq, type: type, data: data || {} });
    mac(body).then(function (m) { ws.send(JSON.stringify({ body: body, mac: m })); });
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function setText(id, text) { document.getElementById(id).textContent = text == null ? "" : String(text); }
  function time(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function showPop(p) {
    var sameSession = current === p.session_id;
    current = p.session_id;
    document.getElementById("waiting").hidden = true;
    var pop = document.getElementById("pop");
    pop.hidden = false;
    pop.dataset.session = p.session_id;
    setText("pop-caller", p.caller || "unknown number");
    setText("pop-live", p.live ? "on the line" : (p.outcome || "ended"));
    setText("pop-language", p.language);
    var id = p.identity || {};
    var parts = [];
    parts.push(id.verified ? "verified" : "not verified");
    if (id.name) parts.push(id.name);
    if (id.account) parts.push("account " + id.account);
    if (id.tier) parts.push(id.tier.toUpperCase());
    setText("pop-identity", parts.join(" · "));
    setText("pop-agent", p.agent ? (p.agent.agent + " (" + p.agent.interface + ") at " + time(p.agent.at)) : "");
    setText("pop-offer", p.offer ? (p.offer.kind + (p.offer.queue ? ", queue " + p.offer.queue : "")) : "");
    setText("pop-reason", p.reason || "");
    setText("pop-summary", p.summary || "");
    var tl = document.getElementById("pop-timeline");
    tl.textContent = "";
    (p.timeline || []).forEach(function (item) {
      var li = el("li", null, "k-" + item.kind + " ch-" + item.channel);
      li.appendChild(el("span", time(item.at), "t"));
      li.appendChild(el("span", item.channel === "voice" ? "" : "[" + item.channel + "] ", "ch"));
      li.appendChild(el("span", item.text));
      if (item.confidence != null) li.appendChild(el("span", "conf " + Number(item.confidence).toFixed(2), "conf"));
      tl.appendChild(li);
    });
    tl.scrollTop = tl.scrollHeight;
    var prev = document.getElementById("pop-previous");
    prev.textContent = "";
    if (!(p.previous || []).length) prev.appendChild(el("li", "none"));
    (p.previous || []).forEach(function (c) {
      prev.appendChild(el("li", when(c.started_at) + " · " + c.channel + " · " + (c.outcome || "live") +
        (c.summary ? " · " + c.summary : "")));
    });
    var cbs = document.getElementById("pop-callbacks");
    cbs.textContent = "";
    if (!(p.callbacks || []).length) cbs.appendChild(el("li", "none"));
    (p.callbacks || []).forEach(function (c) {
      cbs.appendChild(el("li", c.when + " · " + c.status + " · attempts " + c.attempts +
        (c.last_outcome ? " · " + c.last_outcome : "")));
    });
    renderPush(p.session_id, p.push);
    var form = document.getElementById("disposition-form");
    form.action = "/desk/sessions/" + encodeURIComponent(p.session_id) + "/disposition";
    if (!sameSession) setText("disposition-status", "");  // a refresh of the same call keeps "saved"
    window.deskStats.pops += 1;
    window.deskStats.lastPopAt = performance.now();
    window.deskStats.lastPopWall = Date.now();
    window.deskStats.lastSession = p.session_id;
    send("ack", { session_id: p.session_id });
  }

  // ---- "Send a page / 发送页面": pages texted to the caller (visual IVR push)
  var LANGS = { zh: "中文", en: "English" };
  var pushPanel = { session: null, canSend: false, lastUpdate: 0, active: false };

  function langName(code) {
    var name = LANGS[String(code).split("-")[0]];
    return name ? name + " (" + code + ")" : code;
  }
  function fillSelect(select, groups, keep) {
    select.textContent = "";
    groups.forEach(function (g) {
      if (!g.items.length) return;
      var parent = select;
      if (g.label) { parent = document.createElement("optgroup"); parent.label = g.label; select.appendChild(parent); }
      g.items.forEach(function (it) {
        var o = el("option", it.text);
        o.value = it.value;
        parent.appendChild(o);
      });
    });
    if (keep && Array.prototype.some.call(select.options, function (o) { return o.value === keep; })) {
      select.value = keep;
    }
  }
  function renderPushItem(s) {
    var li = el("li", null, "push-item state-" + s.state);
    li.dataset.link = s.link;
    li.dataset.state = s.state;
    li.dataset.node = s.node;
    var head = el("div", null, "push-line");
    head.appendChild(el("strong", s.label, "push-label"));
    var at = s.state === "done" ? s.done_at : (s.state === "opened" ? s.opened_at : null);
    var state = el("span", s.state_text + (at ? " " + time(at) : ""), "push-state");
    head.appendChild(state);
    li.appendChild(head);
    var meta = "SMS / 短信 → " + (s.to || "?") + " · " + time(s.sent_at) + (s.by ? " · " + s.by : "");
    if (s.opened_at) meta += " · opened / 打开于 " + time(s.opened_at);
    li.appendChild(el("div", meta, "push-meta"));
    if (s.reason_text) li.appendChild(el("div", s.reason_text, "push-reason"));
    if (s.steps) {
      var steps = el("div", null, "push-steps");
      steps.appendChild(el("span", "Steps / 步骤 " + s.steps.seen.length + "/" + s.steps.of + " ", "push-steps-count"));
      for (var i = 1; i <= s.steps.of; i++) {
        var seen = s.steps.seen.indexOf(i) >= 0;
        var box = el("span", String(i), "step" + (seen ? " seen" : ""));
        box.title = seen ? "seen / 已看" : "not yet / 未看";
        steps.appendChild(box);
      }
      if (s.steps.finished) steps.appendChild(el("span", " finished / 已完成 ✓", "push-finished"));
      li.appendChild(steps);
    }
    if ((s.activity || []).length) {
      var earlier = (s.activity_total || 0) - s.activity.length;
      if (earlier > 0) li.appendChild(el("div", "… " + earlier + " earlier / 更早的 " + earlier + " 条", "push-meta"));
      var ol = el("ol", null, "push-activity");
      s.activity.forEach(function (a) {
        var item = el("li", null, "k-" + a.kind);
        item.appendChild(el("span", time(a.at), "t"));
        item.appendChild(el("span", a.text));
        ol.appendChild(item);
      });
      li.appendChild(ol);
    }
    return li;
  }
  function renderPush(sid, panel) {
    var box = document.getElementById("push");
    if (!panel || !panel.available) { box.hidden = true; pushPanel.active = false; return; }
    var fresh = pushPanel.session !== sid;
    pushPanel.session = sid;
    pushPanel.canSend = !!panel.can_send;
    pushPanel.lastUpdate = Date.now();
    box.hidden = false;
    var page = document.getElementById("push-page");
    var guides = [], pages = [];
    (panel.pages || []).forEach(function (pg) {
      if (pg.kind === "guide") guides.push({ value: pg.node, text: pg.label + " (" + pg.steps + " steps / 步)" });
      else pages.push({ value: pg.node, text: pg.label });
    });
    fillSelect(page, [{ label: "Guides / 指南", items: guides }, { label: "Pages / 页面", items: pages }],
      fresh ? null : page.value);
    var lang = document.getElementById("push-language");
    fillSelect(lang, [{ items: (panel.languages || []).map(function (c) { return { value: c, text: langName(c) }; }) }],
      fresh ? panel.language : lang.value);
    document.getElementById("push-send").disabled = !panel.can_send;
    setText("push-note", panel.can_send ? "To / 发送至 " + (panel.to || "") : panel.why_text);
    if (fresh) { setText("push-result", ""); document.getElementById("push-result").className = ""; }
    var ul = document.getElementById("push-sent");
    ul.textContent = "";
    (panel.sent || []).forEach(function (s) { ul.appendChild(renderPushItem(s)); });
    pushPanel.active = (panel.sent || []).some(function (s) { return s.state === "texted" || s.state === "opened"; });
    window.deskStats.pushUpdates += 1;
  }
  function pushResult(text, ok) {
    var p = document.getElementById("push-result");
    p.textContent = text;
    p.className = ok ? "ok" : "error";
  }

  function showOffers(list) {
    var ul = document.getElementById("recent-offers");
    if (!ul) return;
    ul.textContent = "";
    list.forEach(function (o) {
      var li = el("li");
      var a = el("a", when(o.at) + " · " + o.kind + (o.queue ? " · " + o.queue : ""));
      a.href = "#";
      a.addEventListener("click", function (ev) { ev.preventDefault(); send("open", { session_id: o.session_id }); });
      li.appendChild(a);
      ul.appendChild(li);
    });
  }

  function showLive(calls) {
    var body = document.getElementById("live-calls");
    if (!body) return;
    body.textContent = "";
    calls.forEach(function (c) {
      var tr = el("tr");
      tr.appendChild(el("td", time(c.started_at)));
      tr.appendChild(el("td", c.caller || ""));
      tr.appendChild(el("td", c.flow_id));
      tr.appendChild(el("td", c.language || ""));
      tr.appendChild(el("td", c.agent || ""));
      var td = el("td"), b = el("button", "Open");
      b.type = "button";
      b.addEventListener("click", function () { send("open", { session_id: c.session_id }); });
      td.appendChild(b);
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  function refuse(why) {
    window.deskStats.refused += 1;
    console.warn("desk: refused a message:", why);
  }

  function onMessage(ev) {
    var outer;
    try { outer = JSON.parse(ev.data); } catch (e) { return refuse("not JSON"); }
    if (typeof outer.body !== "string" || typeof outer.mac !== "string") return refuse("malformed");
    key().then(function (k) {
      return crypto.subtle.verify("HMAC", k, b64urlToBytes(outer.mac), new TextEncoder().encode(outer.body));
    }).then(function (ok) {
      if (!ok) return refuse("bad signature");
      var msg = JSON.parse(outer.body);
      if (!(msg.seq > recvSeq)) return refuse("replayed");
      recvSeq = msg.seq;
      if (msg.type === "pop") showPop(msg.data);
      else if (msg.type === "live") showLive(msg.data);
      else if (msg.type === "offers") showOffers(msg.data);
      else if (msg.type === "push") { if (msg.data.session_id === current) renderPush(current, msg.data.push); }
      else if (msg.type === "error") console.warn("desk:", msg.data.message);
    });
  }

  function connect() {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + "/desk/ws?token=" + encodeURIComponent(cfg.wsToken));
    ws.addEventListener("open", function () {
      statusEl.textContent = "connected";
      statusEl.className = "status on";
    });
    ws.addEventListener("message", onMessage);
    ws.addEventListener("close", function () {
      statusEl.textContent = "disconnected — reloading";
      statusEl.className = "status off";
      // the connect token is single-use: a fresh page gets a fresh one
      setTimeout(function () { location.reload(); }, 3000);
    });
  }

  document.getElementById("disposition-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!current) return;
    var form = ev.target;
    fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": cfg.csrf },
      body: JSON.stringify({ disposition: form.disposition.value, notes: form.notes.value })
    }).then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
      .then(function (res) {
        setText("disposition-status", res[0] ? "saved" : ("not saved: " + res[1].error));
        if (res[0]) { form.notes.value = ""; send("open", { session_id: current }); }
      })
      .catch(function () { setText("disposition-status", "not saved: network error"); });
  });

  document.getElementById("push-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!current || !pushPanel.canSend) return;
    var sid = current, button = document.getElementById("push-send");
    var node = document.getElementById("push-page").value;
    button.disabled = true;
    pushResult("Sending… / 发送中…", true);
    fetch("/api/visual/push", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": cfg.csrf },
      body: JSON.stringify({ session_id: sid, node: node, language: document.getElementById("push-language").value })
    }).then(function (r) {
      return r.json().catch(function () { return { error: "HTTP " + r.status }; })
        .then(function (j) { return [r.status, j]; });
    }).then(function (res) {
      var status = res[0], j = res[1];
      if (status === 201) pushResult("Texted / 已发送 → " + j.sms.to + ": " + j.label, true);
      else if (j.sms) pushResult("Not sent / 未发送: " + (j.sms.reason_text || j.sms.reason || j.sms.status), false);
      else pushResult("Not sent / 未发送: " + (j.reason_text || j.error || ("HTTP " + status)), false);
      if (sid === current) send("push", { session_id: sid });
    }).catch(function () {
      pushResult("Not sent: network error / 未发送：网络错误", false);
    }).then(function () { button.disabled = !pushPanel.canSend; });
  });

  // the status comes pushed over the socket; if the desk bus missed an update,
  // ask again while a page is out and nothing was heard for a while
  setInterval(function () {
    if (current && pushPanel.active && Date.now() - pushPanel.lastUpdate > 10000) send("push", { session_id: current });
  }, 5000);
  setInterval(function () { send("ping", { t: Date.now() }); }, 20000);
  if (cfg.role === "supervisor") setInterval(function () { send("live", {}); }, 5000);
  connect();
})();
