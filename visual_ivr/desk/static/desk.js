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
  window.deskStats = { pops: 0, refused: 0, lastPopAt: null, lastPopWall: null, lastSession: null };

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
    var form = document.getElementById("disposition-form");
    form.action = "/desk/sessions/" + encodeURIComponent(p.session_id) + "/disposition";
    if (!sameSession) setText("disposition-status", "");  // a refresh of the same call keeps "saved"
    window.deskStats.pops += 1;
    window.deskStats.lastPopAt = performance.now();
    window.deskStats.lastPopWall = Date.now();
    window.deskStats.lastSession = p.session_id;
    send("ack", { session_id: p.session_id });
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

  setInterval(function () { send("ping", { t: Date.now() }); }, 20000);
  if (cfg.role === "supervisor") setInterval(function () { send("live", {}); }, 5000);
  connect();
})();
