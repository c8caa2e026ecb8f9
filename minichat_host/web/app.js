// minichat console: a single page over the public HTTP API. Plain ES modules, no build step, no
// dependencies. Every request goes to the same origin under the API prefix the server wrote into the page.

const PREFIX = document.querySelector('meta[name="minichat-api-prefix"]')?.content ?? "/mini-chat";
const API = `${PREFIX}/v1`;
const TOKEN_KEY = "minichat.console.token";
const CHAT_PAGE_SIZE = 20;
const MESSAGE_PAGE_SIZE = 50;
// After Stop, the server finalizes the turn `cancelled` once it notices the closed connection.
const TURN_SETTLE_POLLS = 40;
const TURN_SETTLE_INTERVAL_MS = 250;
const ATTACHMENT_POLLS = 40;
const ATTACHMENT_POLL_INTERVAL_MS = 500;

const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  chats: [],
  chatsCursor: null,
  chat: null, // the open chat (ChatDetail)
  messages: [], // visible messages of the open chat, oldest first
  messagesCursor: null, // cursor for older messages (newest-first paging)
  stream: null, // {chatId, controller, requestId, userEl, assistantEl}
  pending: [], // uploads for the next message: {localId, chatId, file, attachment, status, error}
  route: "chats",
};

// --- small helpers ------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso ?? "") : dateFormat.format(date);
}

function formatCredits(micro) {
  const credits = Number(micro) / 1_000_000;
  return credits.toLocaleString(undefined, { maximumFractionDigits: 6 });
}

function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function announce(text) {
  $("status").textContent = text;
}

function showError(error) {
  const text = error instanceof ApiError ? error.message : `Something went wrong: ${error?.message ?? error}`;
  $("alert-text").textContent = text;
  $("alert").hidden = false;
  if (error instanceof ApiError && error.status === 401) $("token-settings").open = true;
}

function clearError() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
}

// --- API client ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem?.detail || problem?.title || (status ? `HTTP ${status}` : "Request failed");
    super(detail);
    this.status = status;
    this.code = problem?.code ?? null;
    this.problem = problem ?? {};
  }
}

async function api(method, path, { json, form, signal, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  let response;
  try {
    response = await fetch(API + path, { method, headers, body, signal, credentials: "same-origin" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { detail: "The server cannot be reached. Is minichat running?" });
  }
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      problem = { detail: `${response.status} ${response.statusText}` };
    }
    throw new ApiError(response.status, problem);
  }
  return response;
}

async function getJson(path) {
  return (await api("GET", path)).json();
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== null && value !== undefined) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// --- SSE over fetch (EventSource cannot POST) ----------------------------------------------------------

const FRAME_END = /\r\n\r\n|\n\n|\r\r/;

function parseFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split(/\r\n|\n|\r/)) {
    if (line === "" || line.startsWith(":")) continue; // a comment is a keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let match;
      while ((match = FRAME_END.exec(buffer)) !== null) {
        const frame = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const parsed = parseFrame(frame);
        if (parsed) yield parsed;
      }
    }
    const last = parseFrame(buffer);
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

// --- routing ------------------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  clearError();
  if (hash === "/outbox") {
    state.route = "outbox";
    $("chat-page").hidden = true;
    $("outbox-page").hidden = false;
    document.querySelector(".skip-link").setAttribute("href", "#outbox-page");
    setCurrentNav("nav-outbox");
    loadOutbox();
    return;
  }
  state.route = "chats";
  $("outbox-page").hidden = true;
  $("chat-page").hidden = false;
  document.querySelector(".skip-link").setAttribute("href", "#main");
  setCurrentNav("nav-chats");
  const match = hash.match(/^\/chats\/([0-9a-fA-F-]{36})$/);
  openChat(match ? match[1] : null);
}

function setCurrentNav(id) {
  for (const link of document.querySelectorAll(".pages a")) {
    if (link.id === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// --- models, chats ------------------------------------------------------------------------------------

async function loadModels() {
  const select = $("new-chat-model");
  try {
    const body = await getJson("/models");
    state.models = body.items ?? [];
  } catch (error) {
    showError(error);
    return;
  }
  select.replaceChildren(
    ...state.models.map((model) =>
      el(
        "option",
        { value: model.model_id, title: model.description },
        `${model.display_name} (${model.tier}, ${model.multiplier_display})`,
      ),
    ),
  );
  $("new-chat-button").disabled = state.models.length === 0;
}

function modelName(modelId) {
  return state.models.find((model) => model.model_id === modelId)?.display_name ?? modelId;
}

async function loadChats({ append = false } = {}) {
  try {
    const cursor = append ? state.chatsCursor : null;
    const page = await getJson(`/chats${query({ limit: CHAT_PAGE_SIZE, cursor })}`);
    state.chats = append ? [...state.chats, ...page.items] : page.items;
    state.chatsCursor = page.page_info?.next_cursor ?? null;
  } catch (error) {
    showError(error);
  }
  renderChatList();
}

function chatTitle(chat) {
  return chat.title || "Untitled chat";
}

function renderChatList() {
  const list = $("chat-list");
  list.replaceChildren(
    ...state.chats.map((chat) =>
      el(
        "li",
        {},
        el(
          "a",
          {
            href: `#/chats/${chat.id}`,
            "aria-current": state.chat?.id === chat.id ? "page" : null,
            dataset: { chatId: chat.id },
          },
          el("span", { class: "chat-name", text: chatTitle(chat) }),
          el("span", {
            class: "chat-sub",
            text: `${modelName(chat.model)} · ${chat.message_count} messages · ${formatDate(chat.updated_at)}`,
          }),
        ),
      ),
    ),
  );
  $("chat-list-empty").hidden = state.chats.length > 0;
  $("more-chats").hidden = !state.chatsCursor;
}

async function createChat(event) {
  event.preventDefault();
  clearError();
  const title = $("new-chat-title").value.trim();
  const body = { model: $("new-chat-model").value || undefined };
  if (title) body.title = title;
  const button = $("new-chat-button");
  button.disabled = true;
  try {
    const chat = await (await api("POST", "/chats", { json: body })).json();
    $("new-chat-title").value = "";
    await loadChats();
    location.hash = `#/chats/${chat.id}`;
    announce(`Created “${chatTitle(chat)}”.`);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function deleteChat() {
  const chat = state.chat;
  if (!chat || !confirm(`Delete “${chatTitle(chat)}”? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/chats/${chat.id}`);
    announce(`Deleted “${chatTitle(chat)}”.`);
    location.hash = "#/";
    await loadChats();
  } catch (error) {
    showError(error);
  }
}

// --- one chat -----------------------------------------------------------------------------------------

async function openChat(chatId) {
  if (!chatId) {
    state.chat = null;
    $("chat-view").hidden = true;
    $("no-chat").hidden = false;
    renderChatList();
    return;
  }
  try {
    const chat = await getJson(`/chats/${chatId}`);
    if (state.chat?.id !== chat.id) {
      $("edit-form").hidden = true;
      $("message-input").value = "";
    }
    state.chat = chat;
  } catch (error) {
    showError(error);
    state.chat = null;
    $("chat-view").hidden = true;
    $("no-chat").hidden = false;
    return;
  }
  $("no-chat").hidden = true;
  $("chat-view").hidden = false;
  renderChatHeader();
  renderChatList();
  renderPending();
  await loadMessages();
}

function renderChatHeader() {
  const chat = state.chat;
  $("chat-title").textContent = chatTitle(chat);
  $("chat-meta").textContent = `${modelName(chat.model)} · created ${formatDate(chat.created_at)}`;
}

async function loadMessages({ older = false } = {}) {
  const chat = state.chat;
  if (!chat) return;
  try {
    // Newest first, so the latest turn is always on the first page; shown oldest first.
    const params = older
      ? { limit: MESSAGE_PAGE_SIZE, cursor: state.messagesCursor }
      : { limit: MESSAGE_PAGE_SIZE, $orderby: "created_at desc" };
    const page = await getJson(`/chats/${chat.id}/messages${query(params)}`);
    if (state.chat?.id !== chat.id) return;
    const items = [...page.items].reverse();
    state.messages = older ? [...items, ...state.messages] : items;
    state.messagesCursor = page.page_info?.next_cursor ?? null;
  } catch (error) {
    showError(error);
  }
  renderMessages();
}

function renderMessages() {
  const list = $("messages");
  const live = state.stream && state.stream.chatId === state.chat?.id ? state.stream : null;
  const shown = live ? state.messages.filter((m) => m.request_id !== live.requestId) : state.messages;
  list.replaceChildren(...shown.map(renderMessage));
  if (live) list.append(live.userEl, live.assistantEl);
  $("earlier-messages").hidden = !state.messagesCursor;
  updateControls();
}

function roleLabel(message) {
  if (message.role === "user") return "You";
  if (message.role === "assistant") return message.model ? `Assistant · ${modelName(message.model)}` : "Assistant";
  return "System";
}

function renderMessage(message) {
  const item = el(
    "li",
    { class: `msg msg-${message.role}`, dataset: { messageId: message.id, requestId: message.request_id } },
    el("div", { class: "msg-role", text: roleLabel(message) }),
    el("div", { class: "msg-body", text: message.content }),
  );
  if (message.attachments?.length) item.append(renderAttachmentList(message.attachments));
  if (message.role === "assistant") {
    const meta = [];
    if (message.input_tokens || message.output_tokens) {
      meta.push(`${message.input_tokens ?? 0} in / ${message.output_tokens ?? 0} out tokens`);
    }
    meta.push(formatDate(message.created_at));
    item.append(el("div", { class: "msg-meta muted small", text: meta.join(" · ") }));
    item.append(renderReactions(message));
  }
  return item;
}

function renderAttachmentList(attachments) {
  return el(
    "ul",
    { class: "msg-attachments", "aria-label": "Attachments" },
    attachments.map((attachment) => {
      const thumb = attachment.img_thumbnail;
      return el(
        "li",
        {},
        thumb
          ? el("img", {
              src: `data:${thumb.content_type};base64,${thumb.data_base64}`,
              width: thumb.width,
              height: thumb.height,
              alt: "",
            })
          : null,
        `${attachment.filename} (${attachment.kind}, ${attachment.status})`,
      );
    }),
  );
}

function renderReactions(message) {
  const group = el("div", { class: "reactions", role: "group", "aria-label": "Rate this reply" });
  for (const [value, label] of [
    ["like", "Like"],
    ["dislike", "Dislike"],
  ]) {
    group.append(
      el("button", {
        type: "button",
        class: `reaction reaction-${value}`,
        "aria-pressed": message.my_reaction === value ? "true" : "false",
        text: label,
        onclick: () => toggleReaction(message, value),
      }),
    );
  }
  return group;
}

async function toggleReaction(message, value) {
  const chatId = state.chat?.id;
  if (!chatId) return;
  const path = `/chats/${chatId}/messages/${message.id}/reaction`;
  try {
    if (message.my_reaction === value) {
      await api("DELETE", path);
      message.my_reaction = null;
    } else {
      const stored = await (await api("PUT", path, { json: { reaction: value } })).json();
      message.my_reaction = stored.reaction;
    }
    renderMessages();
    announce(message.my_reaction ? `Marked the reply as ${message.my_reaction}d.` : "Removed your rating.");
  } catch (error) {
    showError(error);
  }
}

function lastTurn() {
  const last = state.messages[state.messages.length - 1];
  if (!last) return null;
  const messages = state.messages.filter((m) => m.request_id === last.request_id);
  return { requestId: last.request_id, user: messages.find((m) => m.role === "user") ?? null };
}

function updateControls() {
  const streaming = state.stream !== null;
  const streamingHere = streaming && state.stream.chatId === state.chat?.id;
  const uploading = state.pending.some((p) => p.chatId === state.chat?.id && p.status === "uploading");
  $("send-button").disabled = streaming || uploading;
  $("send-button").textContent = uploading ? "Waiting for uploads…" : "Send";
  $("stop-button").hidden = !streaming;
  $("stop-button").disabled = !streaming;
  $("stop-button").textContent = streamingHere ? "Stop" : "Stop (other chat)";
  const turn = lastTurn();
  $("turn-actions").hidden = streaming || !turn || !$("edit-form").hidden;
  $("edit-turn").disabled = !turn?.user;
}

// --- sending and streaming ----------------------------------------------------------------------------

function liveBubbles(chat, userText, attachments) {
  const userEl = el(
    "li",
    { class: "msg msg-user" },
    el("div", { class: "msg-role", text: "You" }),
    el("div", { class: "msg-body", text: userText }),
  );
  if (attachments.length) userEl.append(renderAttachmentList(attachments));
  const text = document.createTextNode("");
  const assistantEl = el(
    "li",
    { class: "msg msg-assistant", "aria-busy": "true", dataset: { streaming: "true" } },
    el("div", { class: "msg-role", text: `Assistant · ${modelName(chat.model)}` }),
    el("div", { class: "msg-body" }, text),
  );
  return { userEl, assistantEl, text };
}

async function sendMessage(event) {
  event?.preventDefault();
  clearError();
  const chat = state.chat;
  const content = $("message-input").value;
  if (!chat || state.stream) return;
  if (!content.trim()) {
    showError(new ApiError(400, { detail: "Write a message first." }));
    return;
  }
  const uploads = state.pending.filter((p) => p.chatId === chat.id);
  if (uploads.some((p) => p.status === "uploading")) {
    showError(new ApiError(400, { detail: "Wait until the uploads have finished." }));
    return;
  }
  const ready = uploads.filter((p) => p.status === "ready");
  const body = { content };
  if (ready.length) body.attachment_ids = ready.map((p) => p.attachment.id);
  const summaries = ready.map((p) => ({
    attachment_id: p.attachment.id,
    filename: p.attachment.filename,
    kind: p.attachment.kind,
    status: p.attachment.status,
  }));
  await runTurn(chat, {
    userText: content,
    attachments: summaries,
    start: (signal) =>
      api("POST", `/chats/${chat.id}/messages:stream`, { json: body, signal, accept: "text/event-stream" }),
    onStarted: () => {
      $("message-input").value = "";
      // The files now belong to the sent message; failed ones stay listed so the user sees why.
      state.pending = state.pending.filter((p) => !ready.includes(p));
      renderPending();
    },
  });
}

async function retryTurn() {
  const chat = state.chat;
  const turn = lastTurn();
  if (!chat || !turn || state.stream) return;
  clearError();
  await runTurn(chat, {
    userText: turn.user?.content ?? "",
    attachments: turn.user?.attachments ?? [],
    start: (signal) =>
      api("POST", `/chats/${chat.id}/turns/${turn.requestId}/retry`, { signal, accept: "text/event-stream" }),
    replaces: turn.requestId,
  });
}

function startEdit() {
  const turn = lastTurn();
  if (!turn?.user) return;
  $("edit-input").value = turn.user.content;
  $("edit-form").hidden = false;
  $("turn-actions").hidden = true;
  $("edit-input").focus();
}

function cancelEdit() {
  $("edit-form").hidden = true;
  updateControls();
}

async function submitEdit(event) {
  event.preventDefault();
  const chat = state.chat;
  const turn = lastTurn();
  const content = $("edit-input").value;
  if (!chat || !turn || state.stream) return;
  clearError();
  $("edit-form").hidden = true;
  const started = await runTurn(chat, {
    userText: content,
    attachments: turn.user?.attachments ?? [],
    start: (signal) =>
      api("PATCH", `/chats/${chat.id}/turns/${turn.requestId}`, {
        json: { content },
        signal,
        accept: "text/event-stream",
      }),
    replaces: turn.requestId,
  });
  if (!started) $("edit-form").hidden = false;
  updateControls();
}

async function deleteTurn() {
  const chat = state.chat;
  const turn = lastTurn();
  if (!chat || !turn || state.stream) return;
  if (!confirm("Delete your last message and its reply?")) return;
  clearError();
  try {
    await api("DELETE", `/chats/${chat.id}/turns/${turn.requestId}`);
    announce("Deleted the last turn.");
    await Promise.all([loadMessages(), loadChats(), loadQuota()]);
  } catch (error) {
    showError(error);
  }
}

function stopStream() {
  if (state.stream) {
    state.stream.stopped = true;
    state.stream.controller.abort();
    announce("Stopping…");
  }
}

// Runs one streamed turn (send, retry or edit): `start(signal)` opens the SSE response. Returns true when
// the server accepted the turn (a stream opened), false when it answered with a problem before that.
async function runTurn(chat, { userText, attachments, start, replaces = null, onStarted = null }) {
  const controller = new AbortController();
  const { userEl, assistantEl, text } = liveBubbles(chat, userText, attachments);
  const stream = { chatId: chat.id, controller, requestId: null, userEl, assistantEl, stopped: false };
  const body = assistantEl.querySelector(".msg-body");
  state.stream = stream;
  updateControls();

  let response;
  try {
    response = await start(controller.signal);
  } catch (error) {
    state.stream = null;
    updateControls();
    if (error.name !== "AbortError") {
      showError(error);
    } else if (state.chat?.id === chat.id) {
      // Stopped before the stream opened: the server may already hold the (now cancelled) turn.
      announce("Stopped.");
      await loadMessages();
    }
    return false;
  }

  onStarted?.();
  // The replaced turn (retry / edit) disappears from the view: the server soft-deleted it.
  if (replaces) state.messages = state.messages.filter((m) => m.request_id !== replaces);
  renderMessages();
  announce("Waiting for the reply…");

  let terminal = null;
  let tools = null;
  try {
    for await (const { event, data } of sseEvents(response)) {
      if (event === "stream_started") {
        stream.requestId = data.request_id;
        assistantEl.dataset.messageId = data.message_id;
        assistantEl.dataset.requestId = data.request_id;
        userEl.dataset.requestId = data.request_id;
      } else if (event === "delta") {
        if (data.type === "text" || data.type === undefined) text.appendData(data.content ?? "");
      } else if (event === "tool") {
        if (!tools) {
          tools = el("ul", { class: "msg-tools small", "aria-label": "Tools" });
          body.before(tools);
        }
        tools.append(el("li", { text: `${data.name}: ${data.phase === "done" ? "done" : "running…"}` }));
      } else if (event === "citations") {
        assistantEl.append(renderCitations(data.items ?? []));
      } else if (event === "done" || event === "error") {
        terminal = { event, data };
        break;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  }

  assistantEl.removeAttribute("aria-busy");
  delete assistantEl.dataset.streaming;
  let note = null;
  let turnState = null;
  if (terminal?.event === "done") {
    turnState = "done";
    const warnings = (terminal.data.quota_warnings ?? []).filter((w) => w.warning || w.exhausted);
    const parts = warnings.map((w) => `${w.tier} ${w.period}: ${w.remaining_percentage}% left`);
    announce(parts.length ? `Reply finished. Quota warning — ${parts.join(", ")}.` : "Reply finished.");
  } else if (terminal?.event === "error") {
    turnState = "error";
    note = `The reply failed: ${terminal.data.message ?? "error"} (${terminal.data.code ?? "error"}).`;
    showError(new ApiError(0, { detail: note }));
  } else if (stream.stopped) {
    turnState = await settleTurn(chat.id, stream.requestId);
    note = `Stopped — the turn is ${turnState}.`;
    announce(note);
  } else {
    showError(new ApiError(0, { detail: "The reply stream ended unexpectedly; the chat was reloaded." }));
  }

  state.stream = null;
  if (state.chat?.id === chat.id) {
    await loadMessages();
    annotateTurn(stream.requestId, note, turnState);
  } else {
    updateControls();
  }
  await Promise.all([loadQuota(), loadChats()]);
  return true;
}

// Marks the newest message of a turn (after a reload) with how the turn ended.
function annotateTurn(requestId, note, turnState) {
  if (!requestId) return;
  const items = document.querySelectorAll(`#messages li[data-request-id="${CSS.escape(requestId)}"]`);
  const last = items[items.length - 1];
  if (!last) return;
  if (turnState) last.dataset.turnState = turnState;
  if (note) last.append(el("p", { class: "msg-note small", text: note }));
}

// Waits until the server finalized the stopped turn; returns its state (e.g. "cancelled").
async function settleTurn(chatId, requestId) {
  if (!requestId) return "not started";
  let stateName = "running";
  for (let attempt = 0; attempt < TURN_SETTLE_POLLS && stateName === "running"; attempt += 1) {
    try {
      stateName = (await getJson(`/chats/${chatId}/turns/${requestId}`)).state;
    } catch (error) {
      showError(error);
      return "unknown";
    }
    if (stateName === "running") await sleep(TURN_SETTLE_INTERVAL_MS);
  }
  return stateName;
}

function renderCitations(items) {
  return el(
    "div",
    { class: "citations small" },
    el("div", { class: "muted", text: "Sources" }),
    el(
      "ol",
      {},
      items.map((item) =>
        el(
          "li",
          {},
          item.url
            ? el("a", { href: item.url, rel: "noopener noreferrer", target: "_blank", text: item.title })
            : el("strong", { text: item.title }),
          item.snippet ? ` — ${item.snippet}` : "",
        ),
      ),
    ),
  );
}

// --- attachments --------------------------------------------------------------------------------------

let uploadCounter = 0;

function onFilesChosen() {
  const input = $("file-input");
  const chat = state.chat;
  if (!chat) return;
  for (const file of input.files) uploadFile(chat.id, file);
  input.value = "";
}

async function uploadFile(chatId, file) {
  uploadCounter += 1;
  const entry = { localId: uploadCounter, chatId, file, attachment: null, status: "uploading", error: null };
  state.pending.push(entry);
  renderPending();
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    entry.attachment = await (await api("POST", `/chats/${chatId}/attachments`, { form })).json();
    entry.status = entry.attachment.status;
    renderPending();
    for (let poll = 0; poll < ATTACHMENT_POLLS && ["pending", "uploaded"].includes(entry.status); poll += 1) {
      await sleep(ATTACHMENT_POLL_INTERVAL_MS);
      entry.attachment = await getJson(`/chats/${chatId}/attachments/${entry.attachment.id}`);
      entry.status = entry.attachment.status;
      renderPending();
    }
    if (entry.status === "failed") entry.error = entry.attachment.error_code ?? "failed";
    announce(`${file.name}: ${entry.status}.`);
  } catch (error) {
    entry.status = "failed";
    entry.error = error.message;
    announce(`${file.name}: upload failed.`);
  }
  renderPending();
}

async function removePending(entry) {
  state.pending = state.pending.filter((p) => p !== entry);
  renderPending();
  if (entry.attachment && entry.status !== "failed") {
    try {
      await api("DELETE", `/chats/${entry.chatId}/attachments/${entry.attachment.id}`);
    } catch (error) {
      showError(error);
    }
  }
}

function renderPending() {
  const chatId = state.chat?.id;
  const list = $("pending-attachments");
  list.replaceChildren(
    ...state.pending
      .filter((p) => p.chatId === chatId)
      .map((p) =>
        el(
          "li",
          { class: `pending pending-${p.status}`, dataset: { status: p.status } },
          el("span", { class: "pending-name", text: p.file.name }),
          el("span", {
            class: "pending-status",
            text: p.status === "uploading" ? "uploading…" : p.error ? `${p.status}: ${p.error}` : p.status,
          }),
          el("button", {
            type: "button",
            class: "link-button",
            text: "Remove",
            "aria-label": `Remove ${p.file.name}`,
            disabled: p.status === "uploading",
            onclick: () => removePending(p),
          }),
        ),
      ),
  );
  updateControls();
}

// --- quota --------------------------------------------------------------------------------------------

async function loadQuota() {
  let status;
  try {
    status = await getJson("/quota/status");
  } catch (error) {
    showError(error);
    return;
  }
  const bars = [];
  for (const tier of status.tiers ?? []) {
    for (const period of tier.periods ?? []) {
      const label = `${tier.tier} · ${period.period}`;
      const id = `quota-${tier.tier}-${period.period}`;
      const level = period.exhausted ? "exhausted" : period.warning ? "warning" : "ok";
      bars.push(
        el(
          "div",
          { class: `quota-row quota-${level}`, dataset: { tier: tier.tier, period: period.period } },
          el("label", { for: id, class: "quota-label", text: label }),
          el("progress", {
            id,
            max: period.limit_credits_micro,
            value: Math.min(period.used_credits_micro, period.limit_credits_micro),
            dataset: { used: period.used_credits_micro },
          }),
          el("div", {
            class: "quota-text small",
            text:
              `${formatCredits(period.used_credits_micro)} of ${formatCredits(period.limit_credits_micro)} ` +
              `credits used · ${period.remaining_percentage}% left · resets ${formatDate(period.next_reset)}`,
          }),
        ),
      );
    }
  }
  $("quota-bars").replaceChildren(...bars);
  $("quota-empty").hidden = bars.length > 0;
}

// --- outbox (admin) -----------------------------------------------------------------------------------

function itemsOf(body, ...keys) {
  if (Array.isArray(body)) return body;
  for (const key of ["items", ...keys]) if (Array.isArray(body?.[key])) return body[key];
  return [];
}

function outboxUnavailable(text) {
  $("outbox-unavailable").textContent = text;
  $("outbox-unavailable").hidden = false;
  $("outbox-content").hidden = true;
}

async function loadOutbox() {
  $("outbox-unavailable").hidden = true;
  let partitions;
  let letters;
  try {
    [partitions, letters] = await Promise.all([
      getJson("/admin/outbox/status").then((body) => itemsOf(body, "queues", "partitions")),
      getJson("/admin/outbox/dead-letters").then((body) => itemsOf(body, "dead_letters")),
    ]);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      outboxUnavailable("The outbox admin API is not available on this server.");
    } else if (error instanceof ApiError && error.status === 403) {
      outboxUnavailable("The outbox page needs the admin role.");
    } else {
      outboxUnavailable(`The outbox status could not be loaded: ${error.message}`);
    }
    return;
  }
  $("outbox-content").hidden = false;
  renderQueues(partitions);
  renderDeadLetters(letters);
}

function renderQueues(partitions) {
  const queues = new Map();
  for (const p of partitions) {
    const queue = queues.get(p.queue) ?? { queue: p.queue, partitions: 0, backlog: 0, dead: 0, age: null, error: null };
    queue.partitions += 1;
    queue.backlog += Number(p.backlog ?? 0);
    queue.dead += Number(p.dead_letters ?? 0);
    const age = p.oldest_pending_age_seconds;
    if (age !== null && age !== undefined) queue.age = Math.max(queue.age ?? 0, age);
    if (p.last_error) queue.error = p.last_error;
    queues.set(p.queue, queue);
  }
  const rows = [...queues.values()].map((q) =>
    el(
      "tr",
      { dataset: { queue: q.queue } },
      el("th", { scope: "row", text: q.queue }),
      el("td", { class: "num", text: q.partitions }),
      el("td", { class: "num backlog", text: q.backlog }),
      el("td", { text: formatAge(q.age) }),
      el("td", { class: "num", text: q.dead }),
      el("td", { class: "small", text: q.error ?? "—" }),
    ),
  );
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No queues yet." })));
  document.querySelector("#queue-table tbody").replaceChildren(...rows);
}

function payloadText(payload) {
  if (typeof payload !== "string") return JSON.stringify(payload);
  try {
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return payload;
  }
}

function renderDeadLetters(letters) {
  const rows = letters.map((letter) => {
    const actions = el("td", { class: "actions" });
    if ((letter.status ?? "pending") === "pending") {
      actions.append(
        el("button", {
          type: "button",
          text: "Replay",
          "aria-label": `Replay dead letter ${letter.id}`,
          onclick: () => deadLetterAction(letter, "replay"),
        }),
        el("button", {
          type: "button",
          class: "danger",
          text: "Discard",
          "aria-label": `Discard dead letter ${letter.id}`,
          onclick: () => deadLetterAction(letter, "discard"),
        }),
      );
    }
    const reason = el("td", { class: "small" }, letter.last_error ?? "");
    if (letter.payload !== undefined) {
      reason.append(el("details", {}, el("summary", { text: "Payload" }), el("pre", { text: payloadText(letter.payload) })));
    }
    return el(
      "tr",
      { dataset: { deadLetterId: letter.id } },
      el("th", { scope: "row", text: letter.id }),
      el("td", { text: `${letter.queue}${letter.partition !== undefined ? ` / ${letter.partition}` : ""}` }),
      el("td", { text: letter.payload_type ?? "" }),
      el("td", { class: "num", text: letter.attempts ?? "" }),
      el("td", { text: letter.failed_at ? formatDate(letter.failed_at) : "" }),
      reason,
      el("td", { text: letter.status ?? "pending" }),
      actions,
    );
  });
  document.querySelector("#dead-letter-table tbody").replaceChildren(...rows);
  $("dead-letters-empty").hidden = rows.length > 0;
}

async function deadLetterAction(letter, action) {
  clearError();
  if (action === "discard" && !confirm(`Discard dead letter ${letter.id}? Its payload will not be delivered.`)) {
    return;
  }
  try {
    await api("POST", `/admin/outbox/dead-letters/${encodeURIComponent(letter.id)}/${action}`);
    announce(action === "replay" ? `Dead letter ${letter.id} sent back to its queue.` : `Dead letter ${letter.id} discarded.`);
  } catch (error) {
    showError(error);
  }
  await loadOutbox();
}

// --- wiring -------------------------------------------------------------------------------------------

function wire() {
  $("new-chat-form").addEventListener("submit", createChat);
  $("more-chats").addEventListener("click", () => loadChats({ append: true }));
  $("delete-chat").addEventListener("click", deleteChat);
  $("earlier-messages").addEventListener("click", () => loadMessages({ older: true }));
  $("composer").addEventListener("submit", sendMessage);
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  $("stop-button").addEventListener("click", stopStream);
  $("retry-turn").addEventListener("click", retryTurn);
  $("edit-turn").addEventListener("click", startEdit);
  $("edit-cancel").addEventListener("click", cancelEdit);
  $("edit-form").addEventListener("submit", submitEdit);
  $("delete-turn").addEventListener("click", deleteTurn);
  $("file-input").addEventListener("change", onFilesChosen);
  $("outbox-refresh").addEventListener("click", loadOutbox);
  $("alert-dismiss").addEventListener("click", clearError);
  $("token-input").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token-settings").open = false;
    start();
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    start();
  });
  window.addEventListener("hashchange", route);
}

async function start() {
  clearError();
  await loadModels();
  await Promise.all([loadChats(), loadQuota()]);
  route();
  document.body.dataset.ready = "true";
}

wire();
start();
