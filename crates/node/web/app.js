// ragfleet web chat. Plain JS, no dependencies, no network beyond this node.
// Streams answers over SSE (fetch + ReadableStream), keeps the current
// conversation in localStorage so a reload brings it back.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => "/api/v1" + path;
const state = {
  conversationId: localStorage.getItem("ragfleet.conversation") || null,
  busy: false,
  abort: null,
  info: null,
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// ---------------------------------------------------------------- session
// The login session is an HttpOnly cookie; state-changing requests carry
// its CSRF token (from the login answer) in X-CSRF-Token. A 401 shows the
// login form.
const session = { csrf: sessionStorage.getItem("ragfleet.csrf") || "" };
const realFetch = window.fetch.bind(window);
window.fetch = async (input, opts = {}) => {
  const method = (opts.method || "GET").toUpperCase();
  if (method !== "GET" && method !== "HEAD" && session.csrf) {
    opts.headers = Object.assign({}, opts.headers || {}, { "x-csrf-token": session.csrf });
  }
  const resp = await realFetch(input, opts);
  const url = String(input);
  if (resp.status === 401 && url.startsWith("/api/v1") && !url.includes("/auth/login")) showLogin();
  return resp;
};

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-user").focus();
}

async function login(e) {
  e.preventDefault();
  const resp = await realFetch(api("/auth/login"), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: $("login-user").value, password: $("login-password").value }),
  });
  let body = null;
  try { body = await resp.json(); } catch (_) {}
  if (!resp.ok) {
    $("login-error").textContent = body && body.error ? body.error.message : `HTTP ${resp.status}`;
    return;
  }
  session.csrf = body.csrf;
  sessionStorage.setItem("ragfleet.csrf", body.csrf);
  $("login-password").value = "";
  $("login").hidden = true;
  $("app").hidden = false;
  start();
}

async function logout() {
  await fetch(api("/auth/logout"), { method: "POST" });
  session.csrf = "";
  sessionStorage.removeItem("ragfleet.csrf");
  localStorage.removeItem("ragfleet.conversation");
  state.conversationId = null;
  clearMessages();
  showLogin("logged out");
}

async function getJSON(path, opts = {}) {
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (_) { /* empty or not JSON */ }
  if (!resp.ok) {
    const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${resp.status}`;
    throw new Error(msg);
  }
  return body;
}

// ---------------------------------------------------------------- status
async function refreshStatus() {
  const s = $("node-status");
  try {
    const r = await fetch("/ready");
    s.textContent = r.ok ? "ready" : "not ready";
    s.className = "status " + (r.ok ? "ok" : "bad");
  } catch (_) {
    s.textContent = "offline";
    s.className = "status bad";
  }
}

async function loadInfo() {
  try {
    state.info = await getJSON(api("/info"));
  } catch (_) {
    state.info = { generators: ["extractive"], default_generator: "extractive" };
  }
  const sel = $("generator");
  sel.textContent = "";
  for (const g of state.info.generators || []) {
    sel.append(el("option", { value: g, text: g }));
  }
  sel.value = localStorage.getItem("ragfleet.generator") || state.info.default_generator;
  if (!sel.value) sel.value = state.info.default_generator;
  if (state.info.limits && state.info.limits.max_top_k) $("top-k").max = state.info.limits.max_top_k;
}

// ---------------------------------------------------------------- conversations
async function loadConversations() {
  const ul = $("conversations");
  let page;
  try { page = await getJSON(api("/conversations?limit=200")); } catch (e) { return; }
  ul.textContent = "";
  for (const c of page.items) {
    const li = el("li", { "data-id": c.id, title: c.title, onclick: () => openConversation(c.id) },
      el("span", { class: "title", text: c.title || "(untitled)" }),
      el("span", { class: "meta", text: String(Math.ceil(c.turns / 2)) }),
      el("button", {
        class: "del", type: "button", title: "delete conversation", text: "×",
        onclick: async (ev) => {
          ev.stopPropagation();
          await fetch(api("/conversations/" + encodeURIComponent(c.id)), { method: "DELETE" });
          if (state.conversationId === c.id) newChat();
          loadConversations();
        },
      }));
    if (c.id === state.conversationId) li.classList.add("active");
    ul.append(li);
  }
}

function setConversation(id) {
  state.conversationId = id;
  if (id) localStorage.setItem("ragfleet.conversation", id);
  else localStorage.removeItem("ragfleet.conversation");
  for (const li of $("conversations").children) {
    li.classList.toggle("active", li.dataset.id === id);
  }
}

function newChat() {
  setConversation(null);
  clearMessages();
  $("message").focus();
}

function clearMessages() {
  const m = $("messages");
  m.textContent = "";
  m.append($("empty") || el("div"));
}

async function openConversation(id) {
  let conv;
  try {
    conv = await getJSON(api("/conversations/" + encodeURIComponent(id)));
  } catch (e) {
    if (state.conversationId === id) setConversation(null);
    return;
  }
  setConversation(conv.id);
  const m = $("messages");
  m.textContent = "";
  for (const t of conv.turns) {
    if (t.role === "user") addUserMessage(t.content);
    else if (t.role === "assistant") {
      const view = addAssistantMessage();
      view.setText(t.content);
      view.finish(t.citations || [], null);
    }
  }
  m.scrollTop = m.scrollHeight;
}

// ---------------------------------------------------------------- messages
function addUserMessage(text) {
  const empty = $("empty");
  if (empty) empty.remove();
  const m = el("div", { class: "msg user" },
    el("div", { class: "who", text: "You" }),
    el("div", { class: "body", text }));
  $("messages").append(m);
  return m;
}

// Render text with [n] markers turned into buttons opening citation n.
function renderCited(container, text, citations) {
  container.textContent = "";
  const byN = new Map(citations.map((c) => [c.n, c]));
  const re = /\[(\d+)\]/g;
  let last = 0, m;
  while ((m = re.exec(text)) !== null) {
    const n = Number(m[1]);
    const c = byN.get(n);
    if (!c) continue;
    container.append(document.createTextNode(text.slice(last, m.index)));
    container.append(citeButton(c));
    last = m.index + m[0].length;
  }
  container.append(document.createTextNode(text.slice(last)));
}

function citeButton(c) {
  return el("button", {
    class: "cite", type: "button", title: c.title, text: String(c.n),
    onclick: () => showPassage(c),
  });
}

function addAssistantMessage() {
  const body = el("div", { class: "body" });
  const extra = el("div", {});
  const m = el("div", { class: "msg assistant" }, el("div", { class: "who", text: "ragfleet" }), body, extra);
  $("messages").append(m);
  let text = "";
  let citations = [];
  return {
    node: m,
    streaming(on) { body.classList.toggle("streaming", on); },
    setCitations(cs) { citations = cs || []; },
    append(delta) {
      text += delta;
      body.textContent = text;
      const box = $("messages");
      box.scrollTop = box.scrollHeight;
    },
    setText(t) { text = t; body.textContent = t; },
    finish(used, done) {
      body.classList.remove("streaming");
      // Only the passages the answer used (attributed); an answer no
      // passage supports, or an abstention, lists none.
      const cs = used || [];
      const all = citations.length ? citations : cs;
      renderCited(body, text, all);
      extra.textContent = "";
      if (cs.length) {
        const ul = el("ul");
        for (const c of cs) {
          ul.append(el("li", { onclick: () => showPassage(c) }, citeButton(c), " ", c.title || c.doc_id));
        }
        extra.append(el("div", { class: "sources" }, ul));
      }
      if (done && done.timings) {
        const t = done.timings;
        const parts = [`${Math.round(t.total_ms)} ms`];
        if (t.first_token_ms != null) parts.push(`first token ${Math.round(t.first_token_ms)} ms`);
        if (done.usage) parts.push(`${done.usage.completion_tokens} tokens`);
        extra.append(el("div", { class: "timings", text: parts.join(" · ") }));
      }
    },
    fail(message) {
      body.classList.remove("streaming");
      m.classList.add("error");
      body.textContent = (text ? text + "\n" : "") + "⚠ " + message;
    },
  };
}

function showPassage(c) {
  $("passage").hidden = false;
  $("passage-title").textContent = `[${c.n}] ${c.title || c.doc_id}`;
  const where = [`document ${c.doc_id}`, `chars ${c.start}–${c.end}`];
  if (c.page != null) where.push(`page ${c.page}`);
  if (c.score != null) where.push(`score ${Number(c.score).toFixed(3)}`);
  $("passage-meta").textContent = where.join(" · ");
  $("passage-text").textContent = c.snippet;
  const src = $("passage-source");
  src.href = api("/documents/" + encodeURIComponent(c.doc_id));
  src.hidden = false;
}

// ---------------------------------------------------------------- SSE over fetch
// Yields {event, data} for each Server-Sent Event in a fetch Response body.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

async function ask(message) {
  state.busy = true;
  $("send").disabled = true;
  $("stop").hidden = false;
  addUserMessage(message);
  const view = addAssistantMessage();
  view.streaming(true);
  const ctrl = new AbortController();
  state.abort = ctrl;
  const req = { message, stream: true };
  if (state.conversationId) req.conversation_id = state.conversationId;
  const coll = $("collection").value.trim();
  if (coll) req.collection = coll;
  const gen = $("generator").value;
  if (gen) { req.generator = gen; localStorage.setItem("ragfleet.generator", gen); }
  const k = parseInt($("top-k").value, 10);
  if (k > 0) req.top_k = k;
  let finished = false;
  try {
    const resp = await fetch(api("/chat"), {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(req),
      signal: ctrl.signal,
    });
    if (!resp.ok) {
      let msg = `HTTP ${resp.status}`;
      try { const b = await resp.json(); msg = `${b.error.code}: ${b.error.message}`; } catch (_) {}
      throw new Error(msg);
    }
    for await (const ev of sseEvents(resp)) {
      const data = JSON.parse(ev.data);
      if (ev.event === "retrieval") {
        view.setCitations(data.citations);
        if (data.conversation_id && data.conversation_id !== state.conversationId) {
          setConversation(data.conversation_id);
        }
      } else if (ev.event === "token") {
        view.append(data.text);
      } else if (ev.event === "done") {
        view.setText(data.answer);
        view.finish(data.citations, data);
        setConversation(data.conversation_id);
        finished = true;
      } else if (ev.event === "error") {
        view.fail(data.message);
        finished = true;
      }
    }
    if (!finished) view.fail("the stream ended early");
  } catch (e) {
    if (e.name === "AbortError") view.fail("stopped");
    else view.fail(e.message);
  } finally {
    state.busy = false;
    state.abort = null;
    $("send").disabled = false;
    $("stop").hidden = true;
    loadConversations();
  }
}

// ---------------------------------------------------------------- documents
async function loadDocuments() {
  let page;
  try { page = await getJSON(api("/documents?limit=200")); } catch (_) { return; }
  $("doc-count").textContent = page.total ? `(${page.total})` : "";
  const ul = $("documents");
  ul.textContent = "";
  for (const d of page.items) {
    ul.append(el("li", { title: `${d.id} · ${d.collection} · ${d.chunks} chunks` },
      el("span", { class: "title", text: d.title || d.id }),
      el("span", { class: "meta", text: `${d.chunks}` }),
      el("button", {
        class: "del", type: "button", title: "delete document", text: "×",
        onclick: async () => {
          await fetch(api("/documents/" + encodeURIComponent(d.id)), { method: "DELETE" });
          loadDocuments();
        },
      })));
  }
}

// Upload one file with byte progress (XHR has upload progress events; fetch does not).
function uploadFile(file) {
  const bar = el("progress", { max: "100", value: "0" });
  const st = el("span", { class: "state", text: "uploading…" });
  const li = el("li", {}, el("span", { class: "title", text: file.name }), bar, st);
  $("uploads").prepend(li);
  return new Promise((resolve) => {
    const fd = new FormData();
    fd.append("file", file, file.name);
    const coll = $("collection").value.trim();
    if (coll) fd.append("collection", coll);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", api("/documents"));
    if (session.csrf) xhr.setRequestHeader("x-csrf-token", session.csrf);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 90);
    };
    xhr.upload.onload = () => { bar.value = 90; st.textContent = "indexing…"; };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) {}
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        bar.value = 100;
        const chunks = body.documents.reduce((a, d) => a + d.chunks, 0);
        st.textContent = `${body.documents.length} document(s), ${chunks} chunks`;
        st.classList.add("good");
      } else {
        bar.remove();
        st.textContent = body && body.error ? body.error.message : `HTTP ${xhr.status}`;
        st.classList.add("bad");
      }
      resolve();
    };
    xhr.onerror = () => { bar.remove(); st.textContent = "network error"; st.classList.add("bad"); resolve(); };
    xhr.send(fd);
  });
}

async function uploadFiles(files) {
  for (const f of files) await uploadFile(f);
  loadDocuments();
}

// ---------------------------------------------------------------- wiring
function init() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const msg = $("message").value.trim();
    if (!msg || state.busy) return;
    $("message").value = "";
    ask(msg);
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("new-chat").addEventListener("click", newChat);
  $("passage-close").addEventListener("click", () => { $("passage").hidden = true; });
  $("file-input").addEventListener("change", (e) => {
    uploadFiles([...e.target.files]);
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadFiles([...e.dataTransfer.files]);
  });

  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  refreshStatus();
  setInterval(refreshStatus, 10000);
  start();
}

// Who am I (401: the login form), then everything this user may see.
async function start() {
  const resp = await fetch(api("/me"));
  if (!resp.ok) return;
  const me = await resp.json();
  $("whoami").textContent = `${me.name} (${me.role})`;
  $("logout").hidden = me.via !== "session";
  loadInfo();
  loadDocuments();
  loadConversations().then(() => {
    if (state.conversationId) openConversation(state.conversationId);
  });
}

init();
