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

import { json } from "./client.js";
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
  const errorText = $("#error-text");
  const statusEl = $("#status");
  const modes = new Map();
  let active = null;
  let negativeToggle = false;
  let descriptionsOff = null; // why descriptions are off (and what to do), or null when they are on
  let vlmDown = null; // while the configured VLM cannot serve (down, or not its model): the banner's note

  function showError(message) {
    errorText.textContent = message;
    errorEl.hidden = false;
    clickDone();
  }

  // A click on the stage is marked where it landed until its answer comes (the object list
  // changes, or an error): a slow tracker step or encode leaves no doubt that it was taken.
  const pendingClick = el("span", { class: "pending-click", "data-testid": "pending-click", hidden: "" });
  $("#stage").append(pendingClick);
  let pendingTimer = null;
  function clickTaken(event, negative) {
    const r = $("#stage").getBoundingClientRect();
    pendingClick.style.left = `${event.clientX - r.left}px`;
    pendingClick.style.top = `${event.clientY - r.top}px`;
    pendingClick.classList.toggle("negative", negative);
    pendingClick.hidden = false;
    clearTimeout(pendingTimer);
    // A refine that leaves the list as it was: its mask on the stage is the answer.
    pendingTimer = setTimeout(clickDone, 8000);
  }
  function clickDone() {
    clearTimeout(pendingTimer);
    pendingClick.hidden = true;
  }
  function clearError() {
    errorText.textContent = "";
    errorEl.hidden = true;
  }

  // Descriptions off: one notice in every mode saying why and what to do, and every control that
  // needs the VLM (Find, Ask, and whatever a module marks data-needs-vlm: Find all, Auto-refine)
  // disabled with that reason as its tooltip, before anyone tries it.
  function setDescriptions(on, reason) {
    descriptionsOff = on ? null : reason || "descriptions are off"; // the server says why: services.NO_VLM
    const notice = $("#vlm-notice");
    notice.textContent = descriptionsOff || "";
    notice.hidden = !descriptionsOff;
    vlmControls();
  }

  // The controls that need the VLM, disabled while it cannot serve them: no VLM configured, or a
  // configured one that does not answer or does not serve the configured model (the banner's
  // note), with that reason as their tooltip. Their own tooltip comes back when it can.
  function vlmUnavailable() {
    return descriptionsOff || vlmDown;
  }
  // The control that had the keyboard focus when it was disabled (the person typing a question
  // as the VLM went down: the focus falls to the page). It gets the focus back when the VLM
  // does, unless the person has moved on meanwhile (clicked, or focused something else); until
  // then the keys they go on typing are not the page's shortcuts (Delete would remove an object).
  let fellFrom = null;
  const movedOn = () => { fellFrom = null; };
  doc.addEventListener("pointerdown", movedOn, true);
  doc.addEventListener("focusin", movedOn, true);
  function vlmControls() {
    const reason = vlmUnavailable();
    const controls = doc.querySelectorAll("#find-input, #find-submit, #chat-input, #chat-submit, [data-needs-vlm]");
    const focused = doc.activeElement;
    for (const e of controls) control(e, reason);
    if (reason && [...controls].includes(focused)) fellFrom = focused;
    if (!reason && fellFrom) {
      const back = fellFrom;
      fellFrom = null;
      back.focus({ preventScroll: true });
    }
    store.describeOff(reason);
  }

  // A control disabled for `reason` (the VLM's), else while it is busy, with why as its tooltip;
  // its own tooltip when it is enabled.
  function control(e, reason) {
    if (!("ownTitle" in e.dataset)) e.dataset.ownTitle = e.getAttribute("title") || "";
    const why = reason || busy(e);
    e.disabled = !!why;
    const title = why || e.dataset.ownTitle;
    if (title) e.title = title;
    else e.removeAttribute("title");
  }

  // Find while a checked Find waits for its answer; Ask while the answer to the last question
  // about the object it would ask about streams (the server refuses a second one meanwhile).
  const findSubmit = $("#find-submit");
  const chatSubmit = $("#chat-submit");
  function busy(e) {
    if (e === findSubmit && findingPhrase != null) return `finding "${findingPhrase}": wait for its answer`;
    const id = e === chatSubmit ? store.target() : null;
    if (id != null && store.answering(id)) return `still answering the last question about #${id}: ask again once its answer is in`;
    return null;
  }
  function busyControls() {
    for (const e of [findSubmit, chatSubmit]) {
      const had = doc.activeElement === e;
      control(e, vlmUnavailable());
      // Disabled under the person's click: the focus goes to its box, not to the page (where
      // the next Backspace would remove an object).
      if (had && e.disabled && !vlmUnavailable()) e.form.querySelector("input").focus({ preventScroll: true });
    }
  }

  // A checked Find runs until its answer (its find_result or error in every mode; Clip's and
  // Image's request settling too): a line under the box says so, and Find is disabled meanwhile.
  const findPending = el("p", { class: "find-pending", "data-testid": "find-pending", role: "status", hidden: "" });
  $("#find-form").after(findPending);
  let findingPhrase = null;
  // The running Find's own token: an older one settling later leaves it alone. byEvent: its
  // answer is an event (Live's websocket), not its request settling (Clip, Image).
  let findingNow = null;
  function finding(phrase) {
    findingPhrase = phrase;
    findingNow = phrase == null ? null : { byEvent: false };
    findPending.textContent = phrase == null ? "" : `finding "${phrase}"… (the VLM checks each candidate)`;
    findPending.hidden = phrase == null;
    busyControls();
  }

  function showBanner(id, note, tooltip) {
    const banner = $(id);
    banner.textContent = note || "";
    banner.hidden = !note;
    banner.title = (note && tooltip) || "";
  }

  // A configured VLM may not answer yet (a vLLM server takes minutes to load) or stop answering:
  // a banner says so while it lasts and goes by itself when it answers, and while nothing answers
  // the controls that need it are disabled with the banner's note as their tooltip. The server
  // asks the VLM at most every few seconds however many pages poll (Services.vlm_health).
  const VLM_POLL_MS = 4000;
  async function watchVlm() {
    if (!doc.hidden) { // a tab in the background asks nothing: it asks again when shown
      try {
        const status = await json("GET", "/api/vlm");
        showBanner("#vlm-banner", status.note, status.detail);
        // A note: it does not answer, or answers but cannot serve the configured model.
        const down = (status.configured && status.note) || null;
        if (down !== vlmDown) {
          vlmDown = down;
          vlmControls();
        }
      } catch (e) {
        // This server not answering is not the VLM's fault: keep what is shown and ask again.
      }
    }
    setTimeout(watchVlm, VLM_POLL_MS);
  }

  // state: idle | connecting | connected | closed | error | busy
  function setStatus(state, text, tooltip) {
    statusEl.dataset.state = state;
    statusEl.textContent = text || state;
    if (tooltip) statusEl.title = tooltip;
    else statusEl.removeAttribute("title");
  }

  // Run a mode action; a refusal (thrown or rejected) is shown as the error it is. An error from an
  // earlier action clears when the next one starts, so it never outlives a later success. Answers
  // false when it was refused at once (thrown); a promise when the action is one (settled once
  // it has, its refusal shown); else true (an action whose answer comes as events: Live).
  function call(method, ...args) {
    if (method !== "activate") clearError();
    if (vlmUnavailable() && ["find", "describe", "chat"].includes(method)) {
      showError(vlmUnavailable());
      return false;
    }
    const mode = modes.get(active);
    if (!mode || typeof mode[method] !== "function") {
      showError(`${active} mode cannot ${method}`);
      return false;
    }
    // A refused question gets the reason as its answer too, not a bare "Q:" line.
    const refused = (e) => {
      const message = String((e && e.message) || e);
      if (method === "chat") store.apply({ type: "error", code: e.code || "internal", message, object_id: args[0], request: "chat" });
      else showError(message);
    };
    try {
      const r = mode[method](...args);
      if (r && typeof r.catch === "function") return r.catch(refused).then(() => true);
      return true;
    } catch (e) {
      refused(e);
      return false;
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
    absentHint: () => (modes.get(active) || {}).absentHint,
    onPanel: () => busyControls(),
  });
  store.onFound((ev) => {
    if (findingNow == null || !findingNow.byEvent) return;
    if (ev == null) showError(`the Find of "${findingPhrase}" stopped before its answer (the connection was lost): find again once the status says connected`);
    finding(null);
  });
  store.onChange(clickDone);
  stage = createStage($("#stage"), $("#overlay"), () => active, () => store.selected(), (ids) => store.absent(ids));

  // The address names what is shown, #<mode> or #<mode>/<id> (the clip or image open), so a
  // reload comes back to it and Back / Forward move between what was shown (a plain address: the
  // tab the page marks as selected). The item a mode shows is its stage media's data-<mode>-id
  // (clip.js and image.js set it when one shows, remove it when it goes); opening one by id goes
  // through its library (library.js: addLibrary).
  const libraries = new Map(); // mode -> {open(id)}
  const home = (doc.querySelector('[data-mode][aria-selected="true"]') || doc.querySelector("[data-mode]")).dataset.mode;
  function shownItem(mode) {
    const media = doc.querySelector(`#stage > [data-for="${mode}"]`);
    return (media && media.getAttribute(`data-${mode}-id`)) || null;
  }
  const addressOf = (mode) => (shownItem(mode) ? `#${mode}/${shownItem(mode)}` : `#${mode}`);
  // {mode, id|null} of an address; null when it names no mode of this page.
  function readAddress(hash) {
    if (!hash || hash === "#") return { mode: home, id: null };
    const [mode, ...rest] = hash.slice(1).split("/");
    if (!modes.has(mode)) return null;
    return { mode, id: rest.join("/") || null };
  }
  function writeAddress(push) {
    const want = addressOf(active);
    if (location.hash === want) return;
    if (push) history.pushState(null, "", want);
    else history.replaceState(null, "", want);
  }
  // Show what an address names (at start, and on Back / Forward): its mode, and its item opened
  // unless shown already. An item the server no longer has: the mode, and the server's reason.
  function goTo(hash) {
    const to = readAddress(hash);
    if (!to) {
      switchMode(home, false);
      showError(`the address ${hash} names nothing on this page: it shows ${home} instead`);
      writeAddress(false);
      return;
    }
    switchMode(to.mode, false);
    const library = libraries.get(to.mode);
    if (!to.id || !library || to.id === shownItem(to.mode)) {
      writeAddress(false); // nothing to open: it names what is shown
      return;
    }
    library.open(encodeURIComponent(to.id)).catch((e) => {
      if (active !== to.mode) return; // the person has moved on meanwhile
      showError(e.message);
      writeAddress(false);
    });
  }
  window.addEventListener("popstate", () => goTo(location.hash));
  // An item shown in place of another (an upload, an open from the library) is a step Back
  // undoes; the first one in a mode, or one going (deleted), takes the place of the address.
  const itemShown = new MutationObserver(() => {
    const had = readAddress(location.hash);
    writeAddress(!!(had && had.mode === active && had.id && shownItem(active)));
  });
  for (const media of doc.querySelectorAll("#stage > [data-for]")) {
    itemShown.observe(media, { attributeFilter: [`data-${media.dataset.for}-id`] });
  }

  // push: the switch is a step Back undoes (a tab clicked), else the address says it already.
  function switchMode(name, push = true) {
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
    finding(null);
    clearError();
    clickDone();
    setStatus("idle", "idle");
    call("activate");
    if (push) writeAddress(true);
  }

  $("#stage").addEventListener("click", (event) => {
    // The second click of a double-click (detail 2, 3...) lands before the first one's answer
    // has selected its object, so it would start another object: a double-click is one click.
    if (event.detail > 1) return;
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
    hint.hidden = true; // what the next click does changes with this one: shown again on a move
    clickTaken(event, negative);
    call("click", x, y, negative, target);
  });

  // The hint under the pointer says what a click will do: refine the selected object over its
  // mask, a new object elsewhere, or (negative) take a region off the selected object.
  const hint = $("#click-hint");
  function clickHint(event) {
    const { x, y } = stage.coords(event);
    const size = stage.mediaSize();
    if (!size.width || !(x >= 0 && y >= 0 && x < size.width && y < size.height)) {
      hint.hidden = true;
      return;
    }
    const negative = event.shiftKey || negativeToggle;
    const selected = store.selected();
    let text;
    if (negative) text = selected != null ? `remove region from #${selected}` : "select an object first";
    else if (selected != null && stage.onObject(selected, x, y)) text = `refine #${selected}`;
    else text = "new object";
    hint.textContent = text;
    hint.dataset.action = text.startsWith("refine") ? "refine" : negative ? "negative" : "new";
    const r = $("#stage").getBoundingClientRect();
    hint.style.left = `${event.clientX - r.left + 14}px`;
    hint.style.top = `${event.clientY - r.top + 14}px`;
    hint.hidden = false;
  }
  $("#stage").addEventListener("mousemove", clickHint);
  $("#stage").addEventListener("mouseleave", () => { hint.hidden = true; });

  // What the Find box asks: {phrase, count}. A question for a count ("how many cups?", "find
  // all: cups", "count the cups": the openings streamer/objects/find.py's count_phrase takes off)
  // goes to Find all as it is; anything else is a phrase to find, less a "Find:" before it.
  let asksCount = null; // the server's rule (capabilities.count_pattern), once it has answered
  function findQuery() {
    const text = $("#find-input").value;
    if (asksCount && asksCount.test(text)) return { phrase: text.trim(), count: true };
    return { phrase: text.replace(/^\s*find:\s*/i, "").trim(), count: false };
  }
  let countAll = null; // Find all (agent.js: countWith)

  $("#find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const { phrase, count } = findQuery();
    if (!phrase) return;
    clearError();
    if (count && countAll) countAll(phrase);
    else if (findingPhrase == null) {
      finding(phrase);
      const mine = findingNow;
      const answered = call("find", phrase);
      if (answered === false) finding(null);
      else if (answered === true) mine.byEvent = true;
      else answered.then(() => { if (findingNow === mine) finding(null); });
    }
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
    // Refused at once (Live while it reconnects): the question stays in the box to send again.
    if (!call("chat", id, q) && !input.value) input.value = q;
  });

  $("#error-dismiss").addEventListener("click", clearError);

  // Esc deselects; Delete (or Backspace) removes the object whose row has the focus, else the
  // selected one. Not while typing (also in a box disabled under the person's fingers: fellFrom).
  doc.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (fellFrom) return;
    const selected = store.selected();
    const row = t && t.closest ? t.closest("[data-testid=object-item]") : null;
    const target = row ? Number(row.dataset.objectId) : selected;
    if (e.key === "Escape" && selected != null) {
      store.select(null);
      e.preventDefault();
    } else if ((e.key === "Delete" || e.key === "Backspace") && target != null) {
      call("remove", target);
      e.preventDefault();
    }
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

  // The stage fits in the window below whatever sits above it (Clip's toolbar and progress bar
  // grow; the library is under it), so a laptop shows the whole clip without scrolling; never
  // under 240 px.
  const stageEl = $("#stage");
  function fitStage() {
    const top = stageEl.getBoundingClientRect().top + window.scrollY;
    const height = `${Math.max(240, Math.floor(window.innerHeight - top - 8))}px`;
    if (stageEl.style.maxHeight !== height) stageEl.style.maxHeight = height;
  }
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(fitStage).observe(doc.body);
    new ResizeObserver(() => stage.redraw()).observe(stageEl);
  }
  window.addEventListener("resize", fitStage);

  let capabilities = Promise.resolve({});
  return {
    stage,
    store,
    showError,
    clearError,
    setStatus,
    setDescriptions,
    descriptionsOff: () => descriptionsOff,
    activeMode: () => active,
    mode: () => modes.get(active) || null,
    allCandidates: () => false, // checked Find keeps rejected candidates (agent.js sets it)
    findQuery,
    // Find all / count of a phrase, run when the Find box asks how many (agent.js gives it).
    countWith(fn) {
      countAll = fn;
    },
    addMode(name, mode) {
      modes.set(name, mode);
    },
    // A mode's library: open(id) shows its item `id` (a promise; refused: the server's reason).
    addLibrary(name, library) {
      libraries.set(name, library);
    },
    // What the server can do (/api/capabilities), asked once at start: a promise.
    capabilities: () => capabilities,
    // Show what the address names, else the tab the page marks as selected (call once every
    // mode and library is added).
    start() {
      capabilities = json("GET", "/api/capabilities");
      capabilities
        .then((caps) => {
          setDescriptions(caps.descriptions, caps.descriptions_off_reason);
          if (caps.count_pattern) asksCount = new RegExp(caps.count_pattern, "i");
          showBanner("#weights-banner", caps.weights_note);
          if (caps.descriptions) watchVlm();
        })
        .catch((e) => showError(`cannot ask the server what it can do: ${e.message}`));
      goTo(location.hash);
    },
  };
}
