// The page shell every mode shares: tabs, the stage (clicks in media pixels), the Find and chat
// boxes, errors and status. A mode is an object of actions (below) the shell calls; the modes
// never reach into each other.
//
//   mode = {activate(), deactivate(), click(x, y, negative, objectId|null), find(phrase),
//           describe(id), chat(id, question), remove(id), reset()}
//
// click: x, y in the active media's own pixels; negative when shift-clicked or the toggle is
// on; objectId is the object to refine - the selected object when the click lands on it or is
// negative - else null, and the click starts a new object (which, with a VLM on, is described
// at once in every mode).

import { createObjectStore } from "./objects.js";
import { createStage } from "./overlay.js";

// A DOM element with attributes and text, for the modes' toolbars.
export function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

export function createShell(doc = document) {
  const $ = (sel) => doc.querySelector(sel);
  const errorEl = $("#error");
  const statusEl = $("#status");
  const modes = new Map();
  let active = null;
  let negativeToggle = false;

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
  }
  function clearError() {
    errorEl.textContent = "";
    errorEl.hidden = true;
  }
  // state: idle | connecting | connected | closed | error | busy
  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text || state;
  }

  // Run a mode action; a refusal (thrown or rejected) is shown as the error it is.
  function call(method, ...args) {
    const mode = modes.get(active);
    if (!mode || typeof mode[method] !== "function") {
      showError(`${active} mode cannot ${method}`);
      return;
    }
    try {
      const r = mode[method](...args);
      if (r && typeof r.catch === "function") r.catch((e) => showError(String((e && e.message) || e)));
    } catch (e) {
      showError(String((e && e.message) || e));
    }
  }

  let stage = null;
  const store = createObjectStore({
    list: $("#objects"),
    answer: $("#answer"),
    verdict: $("#verdict"),
    onAction: (method, id) => call(method, id),
    onSelect: () => stage && stage.redraw(),
    onError: showError,
  });
  stage = createStage($("#stage"), $("#overlay"), () => active, () => store.selected());

  function switchMode(name) {
    if (name === active) return;
    const old = modes.get(active);
    if (old && old.deactivate) {
      try { old.deactivate(); } catch (e) { console.error(e); }
    }
    active = name;
    for (const tab of doc.querySelectorAll("[data-mode]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.mode === name));
    }
    for (const el of doc.querySelectorAll("[data-for]")) {
      el.hidden = el.dataset.for !== name;
    }
    store.clear();
    stage.clear();
    clearError();
    setStatus("idle", "idle");
    call("activate");
  }

  $("#stage").addEventListener("click", (event) => {
    const { x, y } = stage.coords(event);
    const size = stage.mediaSize();
    if (!size.width || !(x >= 0 && y >= 0 && x < size.width && y < size.height)) return;
    const negative = event.shiftKey || negativeToggle;
    const selected = store.selected();
    let target = null;
    if (selected != null && (negative || stage.onObject(selected, x, y))) target = selected;
    if (negative && target == null) {
      showError("select an object first: a negative click removes a region from the selected object");
      return;
    }
    clearError();
    call("click", x, y, negative, target);
  });

  $("#find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const phrase = $("#find-input").value.replace(/^\s*find:\s*/i, "").trim();
    if (!phrase) return;
    clearError();
    call("find", phrase);
  });

  $("#chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#chat-input");
    const q = input.value.trim();
    if (!q) return;
    const id = store.target();
    if (id == null) {
      showError("select an object in the list (or click one) before asking about it");
      return;
    }
    input.value = "";
    call("chat", id, q);
  });

  $("#reset-objects").addEventListener("click", () => {
    clearError();
    call("reset");
  });

  const negToggle = $("#negative-toggle");
  negToggle.addEventListener("change", () => { negativeToggle = negToggle.checked; });
  for (const tab of doc.querySelectorAll("[data-mode]")) {
    tab.addEventListener("click", () => switchMode(tab.dataset.mode));
  }
  window.addEventListener("resize", () => stage.redraw());

  return {
    stage,
    store,
    showError,
    clearError,
    setStatus,
    activeMode: () => active,
    mode: () => modes.get(active) || null,
    allCandidates: () => false, // checked Find keeps rejected candidates (agent.js sets it)
    addMode(name, mode) {
      modes.set(name, mode);
    },
    // Open the tab the page marks as selected (call once every mode is added).
    start() {
      const first = doc.querySelector('[data-mode][aria-selected="true"]') || doc.querySelector("[data-mode]");
      if (first) switchMode(first.dataset.mode);
    },
  };
}
