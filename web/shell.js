// The page shell every mode shares: tabs, the stage (clicks in media pixels), the chat box,
// errors and status, with the Find box (finding.js) and the address (address.js). A mode is an
// object of actions (below) the shell calls; the modes never reach into each other.
//
//   mode = {activate(), deactivate(), click(x, y, negative, objectId|null), find(phrase),
//           describe(id), chat(id, question), remove(id), reset(), shownItem()?}
//
// shownItem(): the id of the item the mode shows (Clip's clip, Image's image), or null: coming
// back to it, the list shows its objects as they were left (showListAsLeft).
//
// click: x, y in the active media's own pixels; negative when shift-clicked or the toggle is
// on; objectId is the object to refine - the selected object when the click lands on it, is
// negative, or the object is not in the picture now (clickTarget) - else null, and the click
// starts a new object (which, with a VLM on, is described
// at once in every mode). A mode whose shown item changes (another image or clip, or it gone)
// stops what it ran for the old one and calls shell.itemChanged(), as a switch of mode does.

import { createAddress } from "./address.js";
import { json } from "./client.js";
import { el } from "./dom.js";
import { createFindBox } from "./finding.js";
import { createObjectStore } from "./objects.js";
import { createStage } from "./overlay.js";

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
  // An error that no longer holds (what it said to wait for has come) goes, if it is still the
  // one shown.
  function withdrawError(message) {
    if (!errorEl.hidden && errorText.textContent === message) clearError();
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
    if (e === findSubmit && findBox.busy()) return findBox.busy();
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
    // (A question already asked and refused got the reason as its answer: objects.js questioning
    // says it there, and throws only what the panel does not show.)
    const refused = (e) => showError(String((e && e.message) || e));
    try {
      const r = mode[method](...args);
      if (r && typeof r.catch === "function") return r.catch(refused).then(() => true);
      return true;
    } catch (e) {
      refused(e);
      return false;
    }
  }

  // Remove and Clear objects: the objects are no longer the ones clicks go to from now, not only
  // once the server has answered (a click meanwhile went to one being removed, and was refused as
  // for an object that does not exist), and how their descriptions or answers end is not said (it
  // is the person's doing). Those still listed once the request has settled (refused) were not
  // forgotten: they are as they were, the selected one selected again.
  let switches = 0; // mode and item changes so far: a request that settles after one is another list's
  function forget(ids, request) {
    const at = switches;
    const selected = store.selected();
    const wasSelected = selected != null && ids.includes(selected);
    if (wasSelected) store.select(null);
    for (const id of ids) store.removing(id);
    const kept = () => {
      for (const id of ids) if (store.has(id)) store.removing(id, true);
      if (wasSelected && store.selected() == null && store.has(selected)) store.select(selected);
    };
    const done = request();
    if (done === false) kept(); // refused at once (Live, not connected)
    else if (done && typeof done.then === "function") done.then(() => { if (switches === at) kept(); });
  }
  // Pressed again before the server answered (a double-click, a slow server): already on its way.
  const remove = (id) => { if (!store.forgotten(id)) forget([id], () => call("remove", id)); };

  let stage = null;
  const store = createObjectStore({
    list: $("#objects"),
    answer: $("#answer"),
    verdict: $("#verdict"),
    onAction: (method, id) => (method === "remove" ? remove(id) : call(method, id)),
    onSelect: () => stage && stage.redraw(),
    onError: showError,
    onPanel: () => busyControls(),
  });
  // The mode or the item it shows changed (another tab; another image or clip, or the shown one
  // gone: the mode says so): what ran for the one shown before (a checked Find, a Find all, an
  // auto-refine) is not this page's to follow any more (finding.js, agent.js).
  const itemListeners = [];
  const itemChanged = () => {
    switches += 1;
    itemListeners.forEach((fn) => fn());
  };
  const onItemChange = (fn) => itemListeners.push(fn);
  const findBox = createFindBox({ doc, store, call, clearError, showError, onBusy: busyControls, onItemChange });
  store.onChange(clickDone);
  stage = createStage($("#stage"), $("#overlay"), () => active, () => store.selected(), (ids) => store.absent(ids));

  const libraries = new Map(); // mode -> {open(id)}: a mode's library (address.js)
  const address = createAddress({ doc, modes, libraries, active: () => active, switchMode, showError });

  // The list as a mode with an item left it ({item, objects, selected}), by mode: coming back to
  // the same item, the list shows it at once, the selected object selected, until the mode's
  // answer from the server (Clip's hello, Image's reload) puts the objects as the server has
  // them now (an object selected then stays selected while the server still has it).
  const leftLists = new Map();
  function rememberList(mode) {
    const item = mode && mode.shownItem ? mode.shownItem() : null;
    if (item == null) leftLists.delete(active);
    else leftLists.set(active, { item, objects: store.all(), selected: store.selected() });
  }
  function showListAsLeft(mode) {
    const left = leftLists.get(active);
    leftLists.delete(active);
    if (!left || !mode || !mode.shownItem || mode.shownItem() !== left.item) return;
    store.setObjects(left.objects);
    if (left.selected != null && store.has(left.selected)) store.select(left.selected);
  }

  // push: the switch is a step Back undoes (a tab clicked), else the address says it already.
  function switchMode(name, push = true) {
    if (name === active) return;
    const old = modes.get(active);
    rememberList(old);
    if (old && old.deactivate) {
      try { old.deactivate(); } catch (e) { console.error(e); }
    }
    itemChanged();
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
    clickDone();
    setStatus("idle", "idle");
    call("activate");
    showListAsLeft(modes.get(name));
    if (push) address.write(true);
  }

  // The object a click refines, or null for a new one: the selected object when the click is
  // negative, lands on its mask, or it is not in the picture now (lost: the click re-finds it
  // there; Esc first for a new object, as the pointer's hint says).
  function clickTarget(selected, x, y, negative) {
    if (selected == null) return null;
    return negative || stage.onObject(selected, x, y) || store.isAbsent(selected) ? selected : null;
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
    const target = clickTarget(selected, x, y, negative);
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
    else if (selected != null && store.isAbsent(selected)) text = `re-find #${selected} here (Esc: new object)`;
    else if (clickTarget(selected, x, y, false) != null) text = `refine #${selected}`;
    else text = "new object";
    hint.textContent = text;
    hint.dataset.action = negative ? "negative" : text.startsWith("new") ? "new" : "refine";
    const r = $("#stage").getBoundingClientRect();
    hint.style.left = `${event.clientX - r.left + 14}px`;
    hint.style.top = `${event.clientY - r.top + 14}px`;
    hint.hidden = false;
  }
  $("#stage").addEventListener("mousemove", clickHint);
  $("#stage").addEventListener("mouseleave", () => { hint.hidden = true; });

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
      remove(target);
      e.preventDefault();
    }
  });

  $("#reset-objects").addEventListener("click", () => {
    clearError();
    store.clearing();
    forget(store.all().map((o) => o.id), () => call("reset"));
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
    withdrawError,
    setStatus,
    setDescriptions,
    descriptionsOff: () => descriptionsOff,
    activeMode: () => active,
    mode: () => modes.get(active) || null,
    allCandidates: () => false, // checked Find keeps rejected candidates (agent.js sets it)
    findQuery: () => findBox.query(),
    // Find all / count of a phrase, run when the Find box asks how many (agent.js gives it).
    countWith: (fn) => findBox.countWith(fn),
    onItemChange,
    // A mode's shown item changed (its streams for the old one stopped): see itemListeners.
    itemChanged,
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
          if (caps.count_pattern) findBox.countPattern(caps.count_pattern);
          showBanner("#weights-banner", caps.weights_note);
          if (caps.descriptions) watchVlm();
        })
        .catch((e) => showError(`cannot ask the server what it can do: ${e.message}`));
      address.goTo(location.hash);
    },
  };
}
