// The chat page. Talks to the server over one WebSocket (/v1/chat/ws) with server-side
// conversations (conversation.create / conversation.message / cancel / truncate / delete),
// and keeps its own copy of every conversation in localStorage for the sidebar and export.
// A conversation the server forgot (expired, evicted, restarted) is re-created from that copy.
//
// Model output and user text are rendered as Markdown through marked and then DOMPurify, and
// the page's Content-Security-Policy forbids inline script: nothing typed or generated runs.
"use strict";

(() => {
  const STORE_KEY = "stellarchat.conversations.v1";
  const SETTINGS_KEY = "stellarchat.settings.v1";
  const API_KEY = "stellarchat.apiKey";

  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"), exportBtn: $("export"),
    settingsToggle: $("settings-toggle"), settings: $("settings"), openSidebar: $("open-sidebar"),
    closeSidebar: $("close-sidebar"), model: $("model"), connection: $("connection"),
    system: $("system"), temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
    apiKey: $("api-key"), messages: $("messages"), composer: $("composer"), input: $("input"),
    send: $("send"), stop: $("stop"), editing: $("editing"), cancelEdit: $("cancel-edit"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyError: $("key-error"),
  };

  // ---- persistent state ----------------------------------------------------------------
  const load = (key, fallback) => {
    try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
  };
  let conversations = load(STORE_KEY, []);
  let settings = Object.assign({ system: "", temperature: 0.7, top_p: 1, max_tokens: 512, model: "" }, load(SETTINGS_KEY, {}));
  let current = conversations[0]?.id ?? null;
  const saveConversations = () => localStorage.setItem(STORE_KEY, JSON.stringify(conversations));
  const saveSettings = () => localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  const apiKey = () => localStorage.getItem(API_KEY) || "";
  const conversation = () => conversations.find((c) => c.id === current) || null;

  // ---- the socket ----------------------------------------------------------------------
  let socket = null;
  let opening = null;
  let nextId = 1;
  const waiting = new Map(); // frame id -> handler(frame)

  function setConnection(text, online) {
    ui.connection.textContent = text;
    ui.connection.classList.toggle("online", !!online);
  }

  function connect() {
    if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
    if (opening) return opening;
    opening = new Promise((resolve, reject) => {
      const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/chat/ws";
      // A browser cannot send Authorization on a WebSocket: the key travels as a subprotocol.
      const protocols = ["stellarchat"];
      if (apiKey()) protocols.push("bearer." + apiKey());
      let ws;
      try { ws = new WebSocket(url, protocols); } catch (e) { opening = null; reject(e); return; }
      ws.onopen = () => { socket = ws; opening = null; setConnection("connected", true); resolve(ws); };
      ws.onmessage = (event) => {
        let frame;
        try { frame = JSON.parse(event.data); } catch { return; }
        const handler = waiting.get(frame.id);
        if (handler) handler(frame);
      };
      ws.onclose = () => {
        const wasOpen = socket === ws;
        if (wasOpen) socket = null;
        if (opening && !wasOpen) { opening = null; reject(new Error("The server refused the WebSocket (is the API key right?).")); }
        setConnection("offline", false);
        for (const handler of [...waiting.values()]) handler({ type: "closed" });
      };
    });
    return opening;
  }

  async function send(frame, handler) {
    const ws = await connect();
    frame.id = frame.id || "f" + nextId++;
    if (handler) waiting.set(frame.id, handler);
    ws.send(JSON.stringify(frame));
    return frame.id;
  }

  // One reply frame (or an error) for a request frame.
  function ask(frame) {
    return new Promise((resolve, reject) => {
      send(frame, (reply) => {
        waiting.delete(reply.id ?? frame.id);
        if (reply.type === "error") reject(Object.assign(new Error(reply.error.message), { detail: reply.error }));
        else if (reply.type === "closed") reject(new Error("The connection closed."));
        else resolve(reply);
      }).catch(reject);
    });
  }

  // ---- HTTP: models and the key check --------------------------------------------------
  async function fetchModels() {
    const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
    const res = await fetch("/v1/models", { headers });
    if (res.status === 401) { askForKey(!!apiKey()); return false; }
    if (!res.ok) { setConnection("error " + res.status, false); return false; }
    const body = await res.json();
    ui.model.replaceChildren(...body.data.map((m) => new Option(m.id, m.id)));
    if (body.data.some((m) => m.id === settings.model)) ui.model.value = settings.model;
    settings.model = ui.model.value;
    saveSettings();
    return true;
  }

  function askForKey(refused) {
    ui.keyError.hidden = !refused;
    ui.keyDialog.hidden = false;
    ui.keyInput.value = "";
    ui.keyInput.focus();
  }

  // ---- rendering -----------------------------------------------------------------------
  function markdown(text) {
    const html = window.marked ? window.marked.parse(text, { gfm: true, breaks: true }) : null;
    if (html === null || !window.DOMPurify) {
      const pre = document.createElement("p");
      pre.textContent = text;
      return pre.outerHTML; // plain text, escaped
    }
    return window.DOMPurify.sanitize(html, { USE_PROFILE: { html: true } });
  }

  function statsText(s) {
    if (!s) return "";
    const parts = [];
    if (s.ttft_ms != null) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
    if (s.tokens_per_s != null) parts.push(`${s.tokens_per_s.toFixed(1)} tok/s`);
    if (s.tokens != null) parts.push(`${s.tokens} tokens`);
    return parts.join(" · ");
  }

  function renderList() {
    const items = [...conversations].sort((a, b) => b.updated - a.updated).map((c) => {
      const li = document.createElement("li");
      li.classList.toggle("active", c.id === current);
      li.dataset.id = c.id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title || "New chat";
      open.title = c.title || "New chat";
      open.addEventListener("click", () => { current = c.id; ui.sidebar.classList.remove("open"); renderAll(); });
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.setAttribute("aria-label", "Delete");
      del.addEventListener("click", () => deleteConversation(c.id));
      li.append(open, del);
      return li;
    });
    ui.list.replaceChildren(...items);
  }

  function messageNode(c, m, index) {
    const node = document.createElement("div");
    node.className = "msg " + m.role + (m.cut ? " cut" : "");
    const role = document.createElement("div");
    role.className = "role";
    role.append(m.role === "user" ? "You" : "Assistant");
    if (!streaming) {
      if (m.role === "user") role.append(button("Edit", () => startEdit(index)));
      if (m.role === "assistant" && index === c.messages.length - 1) role.append(button("Regenerate", regenerate));
    }
    const content = document.createElement("div");
    content.className = "content";
    content.innerHTML = markdown(m.content);
    if (m.error) {
      const err = document.createElement("p");
      err.className = "error";
      err.textContent = m.error;
      content.append(err);
    }
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = statsText(m.stats);
    node.append(role, content, stats);
    return node;
  }

  function button(label, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function renderMessages() {
    const c = conversation();
    if (!c || c.messages.length === 0) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "Ask anything. Conversations stay in this browser.";
      ui.messages.replaceChildren(empty);
      return;
    }
    ui.messages.replaceChildren(...c.messages.map((m, i) => messageNode(c, m, i)));
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function renderAll() {
    renderList();
    renderMessages();
    ui.send.hidden = streaming;
    ui.stop.hidden = !streaming;
    ui.editing.hidden = editIndex === null;
  }

  // ---- conversations -------------------------------------------------------------------
  function newConversation() {
    const c = { id: "local-" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), serverId: null,
      title: "", model: settings.model, system: settings.system, messages: [], created: Date.now(), updated: Date.now() };
    conversations.push(c);
    current = c.id;
    saveConversations();
    return c;
  }

  async function deleteConversation(id) {
    const c = conversations.find((x) => x.id === id);
    if (!c || (streaming && id === current)) return;
    conversations = conversations.filter((x) => x.id !== id);
    if (current === id) current = conversations[0]?.id ?? null;
    saveConversations();
    renderAll();
    if (c.serverId) ask({ type: "conversation.delete", conversation_id: c.serverId }).catch(() => {});
  }

  // The server's conversation for `c`, created (with the history so far) when it has none
  // or its setup changed.
  async function serverConversation(c, history) {
    if (c.serverId && c.model === settings.model && c.system === settings.system) return c.serverId;
    if (c.serverId) ask({ type: "conversation.delete", conversation_id: c.serverId }).catch(() => {});
    c.model = settings.model;
    c.system = settings.system;
    const frame = { type: "conversation.create", model: c.model,
      messages: history.map((m) => ({ role: m.role, content: m.content })) };
    if (c.system.trim()) frame.system = c.system;
    const reply = await ask(frame);
    c.serverId = reply.conversation_id;
    saveConversations();
    return c.serverId;
  }

  let streaming = false;
  let activeTurn = null;
  let editIndex = null;

  function sampling() {
    const out = {};
    const t = parseFloat(ui.temperature.value), p = parseFloat(ui.topP.value), n = parseInt(ui.maxTokens.value, 10);
    if (Number.isFinite(t)) out.temperature = t;
    if (Number.isFinite(p)) out.top_p = p;
    if (Number.isFinite(n) && n > 0) out.max_tokens = n;
    return out;
  }

  // Sends `text` as the next user message of the current conversation and streams the answer.
  async function sendMessage(text, retried = false) {
    if (streaming || !text.trim()) return;
    const c = conversation() || newConversation();
    const history = c.messages.slice();
    const user = { role: "user", content: text };
    const answer = { role: "assistant", content: "", stats: null };
    c.messages.push(user, answer);
    if (!c.title) c.title = text.slice(0, 60);
    c.updated = Date.now();
    streaming = true;
    renderAll();
    const node = ui.messages.lastElementChild;
    const contentNode = node.querySelector(".content");
    const statsNode = node.querySelector(".stats");
    let conversationId;
    try {
      conversationId = await serverConversation(c, history);
    } catch (e) {
      answer.error = e.message;
      return finishTurn(c);
    }
    const started = performance.now();
    let firstToken = null;
    let pending = false;
    const paint = () => {
      pending = false;
      contentNode.innerHTML = markdown(answer.content);
      ui.messages.scrollTop = ui.messages.scrollHeight;
    };
    await new Promise((resolve) => {
      const frame = Object.assign({ type: "conversation.message", conversation_id: conversationId, content: text }, sampling());
      const handler = (event) => {
        if (event.type === "chat.completion.chunk") {
          const delta = event.chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (firstToken === null) firstToken = performance.now();
            answer.content += delta;
            if (!pending) { pending = true; requestAnimationFrame(paint); }
          }
          return;
        }
        waiting.delete(frame.id);
        activeTurn = null;
        if (event.type === "chat.completion.done") {
          const now = performance.now();
          const tokens = event.usage?.completion_tokens ?? null;
          answer.stats = {
            ttft_ms: firstToken === null ? null : firstToken - started,
            tokens,
            tokens_per_s: firstToken !== null && tokens > 1 && now > firstToken ? (tokens - 1) / ((now - firstToken) / 1000) : null,
          };
          if (event.cancelled) answer.cut = true;
        } else if (event.type === "error") {
          answer.error = event.error.message;
          answer.errorParam = event.error.param;
        } else {
          answer.error = "The connection closed.";
          answer.cut = true;
        }
        resolve();
      };
      frame.id = "m" + nextId++;
      activeTurn = frame.id;
      send(frame, handler).catch((e) => { answer.error = e.message; activeTurn = null; waiting.delete(frame.id); resolve(); });
    });
    paint();
    statsNode.textContent = statsText(answer.stats);
    // The server forgot the conversation: re-create it from this copy and try once more.
    if (answer.error && answer.errorParam === "conversation_id" && !retried && !answer.content) {
      c.messages.splice(-2, 2);
      c.serverId = null;
      streaming = false;
      return sendMessage(text, true);
    }
    finishTurn(c);
  }

  function finishTurn(c) {
    streaming = false;
    c.updated = Date.now();
    saveConversations();
    renderAll();
    ui.input.focus();
  }

  function stop() {
    if (activeTurn) send({ type: "cancel", id: activeTurn }).catch(() => {});
  }

  // Keeps the first `keep` messages here and on the server.
  async function truncate(c, keep) {
    c.messages.splice(keep);
    if (c.serverId) {
      try { await ask({ type: "conversation.truncate", conversation_id: c.serverId, keep }); }
      catch { c.serverId = null; } // re-created with the kept history on the next message
    }
    saveConversations();
  }

  async function regenerate() {
    const c = conversation();
    if (!c || streaming) return;
    const lastUser = c.messages.map((m) => m.role).lastIndexOf("user");
    if (lastUser < 0) return;
    const text = c.messages[lastUser].content;
    await truncate(c, lastUser);
    await sendMessage(text);
  }

  function startEdit(index) {
    const c = conversation();
    if (!c || streaming) return;
    editIndex = index;
    ui.input.value = c.messages[index].content;
    ui.input.focus();
    renderAll();
  }

  async function submit() {
    const text = ui.input.value;
    if (!text.trim() || streaming) return;
    ui.input.value = "";
    if (editIndex !== null) {
      const c = conversation();
      const keep = editIndex;
      editIndex = null;
      if (c) await truncate(c, keep);
    }
    await sendMessage(text);
  }

  function exportJson() {
    const data = JSON.stringify({ exported: new Date().toISOString(), conversations }, null, 2);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([data], { type: "application/json" }));
    a.download = "stellarchat-conversations.json";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ---- wiring --------------------------------------------------------------------------
  function bindSettings() {
    ui.system.value = settings.system;
    ui.temperature.value = settings.temperature;
    ui.topP.value = settings.top_p;
    ui.maxTokens.value = settings.max_tokens;
    ui.apiKey.value = apiKey();
    const update = () => {
      settings.system = ui.system.value;
      settings.temperature = parseFloat(ui.temperature.value);
      settings.top_p = parseFloat(ui.topP.value);
      settings.max_tokens = parseInt(ui.maxTokens.value, 10);
      settings.model = ui.model.value;
      saveSettings();
    };
    for (const el of [ui.system, ui.temperature, ui.topP, ui.maxTokens, ui.model]) el.addEventListener("change", update);
    ui.apiKey.addEventListener("change", () => useKey(ui.apiKey.value.trim()));
  }

  function useKey(key) {
    if (key) localStorage.setItem(API_KEY, key); else localStorage.removeItem(API_KEY);
    ui.apiKey.value = key;
    if (socket) socket.close();
    socket = null;
    return fetchModels();
  }

  ui.composer.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", () => {
    if (streaming) return;
    newConversation();
    ui.sidebar.classList.remove("open");
    renderAll();
    ui.input.focus();
  });
  ui.exportBtn.addEventListener("click", exportJson);
  ui.settingsToggle.addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
  });
  ui.openSidebar.addEventListener("click", () => ui.sidebar.classList.add("open"));
  ui.closeSidebar.addEventListener("click", () => ui.sidebar.classList.remove("open"));
  ui.cancelEdit.addEventListener("click", () => { editIndex = null; ui.input.value = ""; renderAll(); });
  ui.keyForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    ui.keyDialog.hidden = true;
    await useKey(ui.keyInput.value.trim());
  });

  bindSettings();
  renderAll();
  fetchModels().then((ok) => { if (ok) connect().catch(() => {}); }).catch((e) => setConnection(e.message, false));
})();
