// Clip's progress bar: an upload, a rendering export, or the clip's tracking jobs (one per
// object, docs/protocol.md) with Cancel for the one it names and Resume for every stopped one.

import { json } from "./client.js";
import { el, plural, secondClick } from "./dom.js";

const isRunning = (j) => j.state === "running" || j.state === "queued";
// The server goes on with these from the frame they reached (docs/protocol.md, resume).
const isResumable = (j) => ["interrupted", "cancelled", "failed"].includes(j.state);
const ids = (js) => js.map((j) => `#${j.object_id}`).join(", ");
// A job only moves on: queued, running, then how it ended. A click's answer can arrive after the
// websocket said its job started (or moved on); that older word must not take its place.
const STAGE = { queued: 0, running: 1 };
const stage = (j) => STAGE[j.state] ?? 2;
const isNewer = (job, old) =>
  !old || old.job_id !== job.job_id || stage(job) > stage(old) || (stage(job) === stage(old) && job.done >= old.done);

// current(): the clip shown, or null; idleLine(): [state, text] of the bar with no job to show;
// onJobs(): the jobs were summarized again (what depends on them follows: the exports).
export function createJobBar({ shell, current, idleLine, onJobs }) {
  // Hidden until it has something to say (an upload, a clip's figures, a job).
  const progress = el("div", { "data-testid": "progress", "data-state": "idle", class: "clip-progress", hidden: "" });
  const progressBar = el("span", { class: "bar" });
  const progressText = el("span", { class: "text" }, "");
  const cancelBtn = el("button", { type: "button", "data-testid": "cancel-job", hidden: "" }, "Cancel");
  const resumeBtn = el("button", { type: "button", "data-testid": "resume-job", hidden: "" }, "Resume");
  progress.append(progressBar, progressText, cancelBtn, resumeBtn);
  const jobs = new Map(); // object id -> last job message

  // The bar alone: Cancel and Resume are the jobs' (summarize), not an upload's or an export's.
  function setProgress(state, text, percent) {
    progress.dataset.state = state;
    progress.hidden = !text;
    progressText.textContent = text;
    progressBar.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
    cancelBtn.hidden = true;
    resumeBtn.hidden = true;
  }

  function summarize() {
    const all = [...jobs.values()];
    const running = all.filter(isRunning);
    const stopped = all.filter(isResumable);
    if (running.length) {
      const j = running[0];
      const eta = j.eta_s == null ? "…" : `${Math.ceil(j.eta_s)} s`;
      // The others: tracking beside it (clip jobs run --max-clip-jobs at once) or in line.
      const others = running.slice(1);
      const beside = others.filter((o) => o.state === "running").length;
      const queued = others.length - beside;
      const parts = [beside ? `${beside} more tracking` : "", queued ? `${queued} waiting` : ""];
      const more = others.length ? ` (+${parts.filter(Boolean).join(", ")})` : "";
      // Standing still while another object's job catches up (they then go on together): its
      // fps and ETA would only say it is stuck.
      const pace = j.waiting_for == null ? `${j.fps.toFixed(1)} fps · ETA ${eta}` : `waiting for #${j.waiting_for} to catch up, then both go on together`;
      // A resumed job names its phase while it waits for a slot (where it goes on from).
      const phase = j.state === "queued" ? "queued" : j.phase;
      setProgress("running", `Tracking #${j.object_id} ${phase}: ${j.percent.toFixed(0)}% · ${pace}${more}`, j.percent);
    } else if (!all.length) setProgress(...idleLine(), 0);
    else if (stopped.length) {
      const j = stopped[0];
      const at = `${j.percent.toFixed(0)}%`;
      const why = { failed: `${j.error || "tracking failed"} (at ${at})`, interrupted: `interrupted at ${at} (the server stopped)`, cancelled: `cancelled at ${at}` }[j.state];
      const others = stopped.length > 1 ? ` (+${stopped.length - 1} more stopped)` : "";
      setProgress(j.state, `#${j.object_id}: ${why}${others}: Resume goes on from there`, j.percent);
    } else setProgress("done", `Tracked ${plural(all.length, "object")} through ${plural(current().frame_count, "frame")} · 100%`, 100);
    // Cancel stops the one job the bar names; Resume goes on with every stopped one, and each
    // says which.
    if (running.length) {
      cancelBtn.hidden = false;
      cancelBtn.dataset.objectId = String(running[0].object_id);
      cancelBtn.textContent = `Cancel #${running[0].object_id}`;
      cancelBtn.title = `stop tracking #${running[0].object_id}: what it has tracked stays, and Resume goes on from there`;
    }
    if (stopped.length) {
      resumeBtn.hidden = false;
      resumeBtn.textContent = `Resume ${ids(stopped)}`;
      resumeBtn.title = `go on tracking ${ids(stopped)} from the frame ${stopped.length > 1 ? "each" : "it"} reached`;
    }
    onJobs();
  }

  // A click's, Cancel's or Resume's answer: its object's job, if it has one.
  function put(id, job) {
    if (isNewer(job, jobs.get(id))) jobs.set(id, job);
  }

  function apply(body) {
    if (body.job) put(body.object_id, body.job);
    summarize();
  }

  // Each stopped job is resumed on its own: one the server refuses (its error shown) leaves the
  // others going on.
  // Each answers for the clip it was sent for: another opened meanwhile has objects of the same ids.
  // Pressed again while its requests are on their way (a double-click): nothing more to resume.
  let resuming = false;
  resumeBtn.addEventListener("click", async () => {
    if (resuming) return;
    resuming = true;
    shell.clearError();
    const shown = current();
    try {
      for (const j of [...jobs.values()].filter(isResumable)) {
        try {
          const body = await json("POST", `/api/clips/${shown.id}/objects/${j.object_id}/resume`);
          if (current() !== shown) return;
          apply(body);
        } catch (e) {
          if (current() !== shown) return;
          shell.showError(`#${j.object_id}: ${e.message}`);
        }
      }
    } finally {
      resuming = false;
    }
  });
  // The bar then names the next job: a double-click's second click would cancel that one too,
  // as would a press while this cancel is on its way.
  let cancelling = false;
  cancelBtn.addEventListener("click", async (e) => {
    if (cancelling || secondClick(e)) return;
    cancelling = true;
    shell.clearError();
    const shown = current();
    try {
      const body = await json("POST", `/api/clips/${shown.id}/objects/${cancelBtn.dataset.objectId}/cancel`);
      if (current() === shown) apply(body);
    } catch (e) {
      if (current() === shown) shell.showError(e.message);
    } finally {
      cancelling = false;
    }
  });

  return {
    element: progress,
    setProgress,
    summarize,
    apply,
    // The job of object `id` as the server says it now (a job or progress message, a clip's object).
    set: put,
    // The jobs of a clip's objects as the server lists them (an open's answer, a hello): those
    // of objects it no longer has go.
    setAll(objects) {
      jobs.clear();
      for (const o of objects) if (o.job) jobs.set(o.id, o.job);
    },
    // Object `id`'s job is gone (null: every job, another clip shown or none).
    forget(id) {
      if (id == null) jobs.clear();
      else jobs.delete(id);
    },
    any: () => jobs.size > 0,
    running: () => [...jobs.values()].some(isRunning),
  };
}
