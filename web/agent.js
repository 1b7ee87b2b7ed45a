// The VLM in the segmentation loop, on the page: the "all candidates" switch for checked Find,
// and auto-refine of the selected object (each click the VLM proposes is drawn on the stage as
// it comes, numbered, green for positive and red for negative; Stop ends it). It works through
// the shared object store and the active mode's actions: autoRefine(id, maxSteps, onEvent) and
// stopRefine(id) (docs/protocol.md, refine_click / refine_done).

import { el, plural, secondClick } from "./dom.js";

// What an auto-refine stopped leaves, in the server's words (objects/vlm.py clicks_kept).
const clicksKept = (n) => (n === 0 ? "no click was applied" : `the ${plural(n, "click")} applied ${n === 1 ? "stays" : "stay"}`);

export function createAgent(shell, doc = document) {
  const { store } = shell;
  const $ = (sel) => doc.querySelector(sel);
  const stageEl = $("#stage");
  doc.head.append(el("link", { rel: "stylesheet", href: "/agent.css" }));

  const allBox = el("input", { type: "checkbox", id: "find-all-candidates", "data-testid": "find-all-candidates", "data-needs-vlm": "" });
  // Find's own option, on a line of its own under the Find box: beside Find all it read as
  // Find all's (which has no such option).
  const allLabel = el("label", { class: "find-option", title: "Keep the candidates the VLM rejects too, flagged" });
  // Worded as the server's note on rejected candidates says it ("ask for all candidates").
  allLabel.append(allBox, " Find: keep all candidates");
  const refineBtn = el("button", { type: "button", "data-testid": "auto-refine", "data-needs-vlm": "" }, "Auto-refine");
  const stopBtn = el("button", { type: "button", "data-testid": "stop-refine", hidden: "" }, "Stop");
  const state = el("span", { "data-testid": "refine-status", class: "refine-status", role: "status" });
  const findAllBtn = el("button", { type: "button", "data-testid": "find-all", "data-needs-vlm": "", title: "Find every instance of the phrase and count them" }, "Find all / count");
  const stopFindBtn = el("button", { type: "button", "data-testid": "stop-find", hidden: "" }, "Stop");
  const findState = el("span", { "data-testid": "find-status", class: "refine-status", role: "status" });
  const tools = el("div", { class: "tools agent-tools" });
  tools.append(findAllBtn, stopFindBtn, findState, refineBtn, stopBtn, state);
  $("#find-form").after(allLabel, tools);

  const layer = el("div", { class: "refine-clicks", "data-testid": "refine-clicks" });
  stageEl.append(layer);

  let running = null; // the object being refined
  let refineRun = 0; // bumps with each auto-refine, and when the mode or its item changes
  let clicks = []; // [{x, y, positive, step}] in the server's frame pixels (as masks), for the object being refined
  let clicksFor = null; // the object those clicks were made on

  function drawClicks() {
    layer.replaceChildren();
    for (const c of clicks) {
      const at = shell.stage.stagePoint(c.x, c.y);
      if (!at) continue;
      const dot = el("span", { class: `refine-click ${c.positive ? "positive" : "negative"}`, "data-testid": "refine-click" }, String(c.step));
      dot.style.left = `${at[0]}px`;
      dot.style.top = `${at[1]}px`;
      layer.append(dot);
    }
  }

  // Show one of a pair of buttons (start, Stop) in the other's place. The server ends a run by
  // itself (done, counted): a focused Stop hidden then would drop the keyboard focus to the page,
  // so the focus moves to the button shown in its place.
  function swap(show, hide) {
    const hadFocus = doc.activeElement === hide;
    // At least as wide as the one it replaces: a narrower Stop moved the button beside it under
    // the pointer, and a double-click's second click started that one.
    const width = hide.hidden ? 0 : hide.getBoundingClientRect().width;
    show.style.minWidth = width ? `${width}px` : "";
    show.hidden = false;
    hide.hidden = true;
    if (hadFocus) show.focus({ preventScroll: true });
  }

  function setRunning(id) {
    running = id;
    store.atVlm("refine", id == null ? null : `auto-refine of #${id}`);
    if (id != null) swap(stopBtn, refineBtn);
    else swap(refineBtn, stopBtn);
  }

  function onEvent(ev) {
    if (ev.type === "refine_click" && ev.object_id === running) {
      // In the server's frame pixels, as masks are (stagePoint places them on the picture).
      clicks.push({ x: ev.x, y: ev.y, positive: ev.positive, step: ev.step });
      state.textContent = `click ${ev.step}: ${ev.positive ? "add" : "remove"} at (${Math.round(ev.x)}, ${Math.round(ev.y)})`;
      drawClicks();
    } else if (ev.type === "error" && running != null && (ev.object_id == null || ev.object_id === running)) {
      // Refused before it started (Live: not visible now, busy, no VLM): the error is shown.
      // Live's connection lost (objects.js): it stopped, and says so.
      state.textContent = ev.code === "connection_lost" ? ev.message : "";
      setRunning(null);
    } else if (ev.type === "refine_done" && ev.object_id === running) {
      state.textContent = ev.message;
      if (ev.reason === "unclear" || ev.reason === "error") shell.showError(ev.message);
      setRunning(null);
    }
  }
  store.onRefine(onEvent);

  refineBtn.addEventListener("click", async () => {
    const id = store.selected();
    if (id == null) {
      shell.showError("select an object (click it, or pick it in the list) to auto-refine it");
      return;
    }
    const mode = shell.mode();
    if (!mode || typeof mode.autoRefine !== "function") {
      shell.showError(`${shell.activeMode()} mode cannot auto-refine`);
      return;
    }
    shell.clearError();
    clicks = [];
    clicksFor = id;
    drawClicks();
    setRunning(id);
    state.textContent = "asking the VLM for the next click…";
    const mine = ++refineRun;
    try {
      await mode.autoRefine(id, 4, onEvent);
    } catch (e) {
      if (mine === refineRun && running === id) {
        shell.showError(String((e && e.message) || e));
        state.textContent = ""; // it never asked
        setRunning(null);
      }
    }
  });

  // A double-click on a start button lands its second click on the Stop that took its place.
  stopBtn.addEventListener("click", async (e) => {
    if (secondClick(e)) return;
    const mode = shell.mode();
    if (running == null || !mode) return;
    const id = running;
    const mine = refineRun;
    state.textContent = "stopping…";
    // Every mode's server answers refine_done, `stopped`, with the clicks it applied. Clip and
    // Image close the stream when their refine's answer has not begun (no click was applied) or
    // their stop is refused: said here.
    if ((await mode.stopRefine(id)) === false && mine === refineRun && running === id) {
      state.textContent = `stopped; ${clicksKept(clicks.length)}`;
      setRunning(null);
    }
  });

  // Find all / count: the phrase of the Find box ("cups", "how many cups?").
  let finding = false;
  let findRun = 0; // bumps with each Find all, and when the mode or its item changes
  function setFinding(on, phrase = null) {
    finding = on;
    store.atVlm("find-all", on ? `Find all of "${phrase}"` : null);
    if (on) swap(stopFindBtn, findAllBtn);
    else swap(findAllBtn, stopFindBtn);
  }
  store.onFind((ev) => {
    if (ev.type === "find_progress") {
      if (ev.stage === "proposing") findState.textContent = `proposing regions for "${ev.phrase}"…`;
      else if (ev.stage === "classifying") findState.textContent = `asking the VLM: ${ev.done}/${ev.total} regions, ${ev.accepted} "${ev.phrase}" so far`;
      else {
        findState.textContent = "stopped; nothing more tracked";
        setFinding(false);
      }
    } else if (ev.type === "find_result") {
      // Cleared while it ran (Clear objects): the message says how far it got, so it leads.
      findState.textContent = ev.cleared
        ? `Find all of "${ev.phrase}": ${ev.message}`
        : `count: ${ev.count} "${ev.phrase}"${ev.message ? ` (${ev.message})` : ""}`;
      setFinding(false);
    } else if (ev.type === "error" && (finding || ev.code !== "connection_lost")) {
      findState.textContent = ev.code === "connection_lost" ? ev.message : "";
      setFinding(false);
    }
  });
  findAllBtn.addEventListener("click", () => {
    const { phrase } = shell.findQuery();
    if (!phrase) {
      shell.showError('type what to count in the Find box, e.g. "cups" or "how many cups?"');
      return;
    }
    findAll(phrase);
  });
  shell.countWith(findAll); // Enter on "how many cups?" counts, as this button does
  async function findAll(phrase) {
    if (finding) {
      shell.showError("a Find all is still running: wait for its count, or Stop it first");
      return;
    }
    const mode = shell.mode();
    if (!mode || typeof mode.findAll !== "function") {
      shell.showError(`${shell.activeMode()} mode cannot find all on this page yet`);
      return;
    }
    shell.clearError();
    setFinding(true, phrase);
    findState.textContent = "starting…";
    const mine = ++findRun;
    try {
      await mode.findAll(phrase);
    } catch (e) {
      if (mine !== findRun) return; // for a mode or item left meanwhile: not this one's news
      shell.showError(String((e && e.message) || e));
      findState.textContent = "";
      setFinding(false);
    }
    // Clip and Image: the stream has ended (count shown, or stopped)
    if (mine === findRun && shell.activeMode() !== "live" && finding) {
      findState.textContent = findState.textContent.startsWith("count") ? findState.textContent : "stopped; nothing tracked";
      setFinding(false);
    }
  }
  stopFindBtn.addEventListener("click", (e) => {
    if (secondClick(e)) return;
    const mode = shell.mode();
    if (mode && typeof mode.stopFind === "function") mode.stopFind();
  });

  // The stage changes size with the window and with what sits above it (shell.js fitStage): the
  // dots move with the picture they were placed on.
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(drawClicks).observe(stageEl);
  else window.addEventListener("resize", drawClicks);

  // Another mode, image or clip: its find-all and auto-refine (stopped by the mode, or gone with
  // Live's session) send nothing more here, so both are idle, and a count asked now is this one's.
  shell.onItemChange(() => {
    refineRun += 1;
    findRun += 1;
    clicks = [];
    clicksFor = null;
    drawClicks();
    state.textContent = "";
    setRunning(null);
    findState.textContent = "";
    setFinding(false);
  });

  // Its object gone (removed, cleared, another image or mode): its clicks go from the stage.
  store.onObjects((objects) => {
    if (clicksFor == null || objects.some((o) => o.id === clicksFor)) return;
    clicks = [];
    clicksFor = null;
    drawClicks();
    state.textContent = "";
    if (running != null && !objects.some((o) => o.id === running)) setRunning(null);
  });

  return {
    allCandidates: () => allBox.checked,
  };
}
