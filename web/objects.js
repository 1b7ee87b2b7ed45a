// The one object store of the page, for every mode: the object list (ids, labels, descriptions,
// verdicts), the selection, and each object's description and chat as they stream in. It reads
// the shared object events (docs/protocol.md "Object events") the same way whether they came over
// the live websocket, the clip websocket or an NDJSON stream, and renders the panel and (through
// object_rows.js) the list.

import { createAnswerPanel } from "./answer_panel.js";
import { createObjectRows } from "./object_rows.js";

// list, answer, verdict: the elements it renders into. onAction(method, id): a list button
// (describe, remove); onSelect(): the selection changed; onError(message): show an error;
// onPanel(): the panel was drawn again (the shell's Ask follows whether an answer is streaming).
export function createObjectStore({ list, answer, verdict, onAction, onSelect, onError, onPanel = () => {} }) {
  let objects = []; // [{id, label, source, description, verdict}] as the server names them
  let selected = null;
  let target = null; // the object the panel shows when none is selected
  let note = null; // a standing note above the answer
  let describeOff = null; // why Describe is disabled (no VLM, or it does not answer), or null
  let absent = new Set(); // the objects the picture on the stage does not show (present false)
  // id -> {text, verdict, iou, note, attempts, failed, describing, waiting, chat: [{role, text,
  // done}]}; failed: why the last description stopped with no verdict (shown until Describe starts
  // another); describing: one is asked for or streaming (its Describe waits); waiting: asked for,
  // and waiting its turn for the VLM (the page's share: docs/protocol.md) until description_start.
  const answers = new Map();
  const attempts = new Map(); // id -> the description attempt whose tokens are showing
  // The objects the person removed here (their remove sent): what their description, answer or
  // auto-refine says as it ends (stopped, refused: "no object 1 ...") is no news to them.
  let removedHere = new Set();
  let clears = 0; // Clear objects pressed so far (item.js clickAnswer)
  const refineListeners = []; // auto-refine's events go to agent.js
  const changeListeners = []; // the objects or their descriptions changed (the library's counts)
  const changed = () => changeListeners.forEach((fn) => fn());
  const findListeners = []; // find-all's progress and count go to agent.js
  const foundListeners = []; // a checked Find's answer (its result or its error) goes to finding.js
  // The list was replaced or cleared: agent.js forgets the clicks it drew for an object gone.
  const listListeners = [];
  const listed = () => listListeners.forEach((fn) => fn(objects));

  function entry(id) {
    const key = id == null ? target : id;
    if (key == null) return null;
    if (!answers.has(key)) answers.set(key, { text: "", verdict: "pending", iou: null, attempts: 0, chat: [] });
    return answers.get(key);
  }

  // --- rendering ------------------------------------------------------------------------

  const describing = (id) => !!(answers.get(id) && answers.get(id).describing);
  const isAbsent = (id) => absent.has(id);
  const rows = createObjectRows({ list, onAction, select, isAbsent, isDescribing: describing });
  function renderList() {
    rows.draw(objects, selected, describeOff);
  }

  // The object the panel shows (its verdict line, its answer): the selected one, else the one
  // described last. An object's description or answer that ended without its end is said once:
  // there while the panel shows that object, else in the error box.
  const shownId = () => (selected != null ? selected : target);
  const shown = (id) => shownId() === id;
  const panel = createAnswerPanel({ answer, verdict });
  function renderAnswer() {
    const id = shownId();
    panel.show(id, id == null ? null : answers.get(id) || null, note, describeOff, atVlmBesides(id));
    onPanel();
  }

  // What else of this page's holds its share of the VLM now (agent.js: an auto-refine, a Find all;
  // finding.js: a Find): key -> its words.
  const vlmWork = new Map();
  function atVlm(key, words) {
    if (words == null) vlmWork.delete(key);
    else vlmWork.set(key, words);
    renderAnswer();
  }

  // What of this page's is at the VLM now besides object `id`'s description: others' (past their
  // turn: started) and answers, an auto-refine (its own too), a Find. Its words, for the panel.
  function atVlmBesides(id) {
    const others = [];
    if ([...answers].some(([other, a]) => other !== id && ((a.describing && !a.waiting) || answering(other)))) others.push("other descriptions and answers");
    return [...others, ...vlmWork.values()];
  }

  // Whether the answer to a question about object `id` is still on its way (asked, not done).
  function answering(id) {
    const a = id == null ? null : answers.get(id);
    const last = a && a.chat[a.chat.length - 1];
    return !!last && ((last.role === "user" && !!last.asked) || (last.role === "assistant" && !last.done));
  }

  // The answer still on its way in `a` ends here, unfinished, with `reason`: a question with no
  // word of its answer yet gets the reason as its answer, a half answer is marked cut off.
  function cutAnswer(a, reason) {
    const last = a.chat[a.chat.length - 1];
    if (last && last.role === "user" && last.asked) a.chat.push({ role: "assistant", text: `no answer: ${reason}`, done: true });
    else if (last && last.role === "assistant" && !last.done) Object.assign(last, { text: `${last.text}… (cut off: ${reason})`, done: true });
    else return false;
    return true;
  }

  function render() {
    renderList();
    renderAnswer();
  }

  // --- state ----------------------------------------------------------------------------

  function setObjects(infos) {
    objects = infos.map((o) => ({ ...o })); // copies: the caller keeps its own
    if (selected != null && !objects.some((o) => o.id === selected)) selected = null;
    if (target != null && !objects.some((o) => o.id === target)) target = null; // Ask's object
    absent = new Set([...absent].filter((id) => objects.some((o) => o.id === id)));
    for (const id of [...answers.keys()]) {
      if (!objects.some((o) => o.id === id)) answers.delete(id);
    }
    render();
    listed();
    changed();
  }

  // Objects as the server kept them (a clip opened from the library): their descriptions,
  // verdicts and chat come back with them, and no description streamed before is still showing
  // (the next token of one still streaming starts its text over, not after the kept one).
  function restore(infos) {
    answers.clear();
    attempts.clear();
    keep(infos);
    setObjects(infos);
  }

  // The kept descriptions, verdicts and chat of `infos` (KeptObjectInfo), for the objects this
  // page has no answer of its own for (one streaming now, or shown since, is newer).
  function keep(infos) {
    for (const o of infos) {
      if (answers.has(o.id) || (o.description == null && !(o.chat || []).length)) continue;
      answers.set(o.id, {
        text: o.description || "",
        verdict: o.verdict || "pending",
        iou: o.iou == null ? null : o.iou,
        note: o.note || null,
        attempts: o.attempts || 0,
        chat: (o.chat || []).map((t) => ({ role: t.role, text: t.content, done: true })),
      });
    }
  }

  // Add or update one object (Image and Clip learn of a new object from their click answer).
  function upsert(info) {
    const i = objects.findIndex((o) => o.id === info.id);
    if (i < 0) setObjects([...objects, info]);
    else setObjects(objects.map((o) => (o.id === info.id ? { ...o, ...info } : o)));
  }

  function select(id) {
    selected = id;
    if (id != null) target = id;
    render();
    onSelect();
  }

  function clear() {
    objects = [];
    selected = null;
    target = null;
    note = null;
    absent = new Set();
    removedHere = new Set(); // another item or mode: its ids are not these
    answers.clear();
    attempts.clear();
    render();
    listed();
  }

  // A question the person asked (the answer streams in as chat_token events).
  function asked(id, question) {
    const a = entry(id);
    a.chat.push({ role: "user", text: question, done: true, asked: true });
    if (a.chat.length > 40) a.chat.splice(0, a.chat.length - 40);
    renderAnswer();
  }

  // A description of `id` was asked for (the page's describe request; Live: its describe message,
  // or the server starting one for a new object): from now it waits its turn for the VLM, and
  // its Describe with it, until its description_start, or its refusal or error.
  function requested(id) {
    const a = entry(id);
    Object.assign(a, { describing: true, waiting: true, failed: null });
    render();
  }

  // --- the shared object events ---------------------------------------------------------

  function apply(ev) {
    switch (ev.type) {
      case "objects":
        if (ev.restored) keep(ev.objects); // Live's reconnect: a reloaded page has none of them
        setObjects(ev.objects);
        if (ev.added != null) select(ev.added);
        if (ev.added != null && ev.describe) requested(ev.added); // Live: the server started it
        return true;
      case "description_start": {
        target = ev.object_id;
        const old = answers.get(ev.object_id);
        answers.set(ev.object_id, { text: "", verdict: "pending", iou: null, attempts: 0, chat: old ? old.chat : [], describing: true });
        attempts.delete(ev.object_id);
        render();
        return true;
      }
      case "description_token": {
        const a = entry(ev.object_id);
        // A new attempt (the previous description missed the object) starts the text over. One
        // this page did not see start (it left the item and came back mid-way, which forgot
        // it) goes on as the rest of a description, marked so, and its Describe waits for it.
        if (attempts.get(ev.object_id) !== ev.attempt) {
          const joined = !a.describing;
          attempts.set(ev.object_id, ev.attempt);
          a.text = joined ? "…" : "";
          if (joined) {
            a.describing = true;
            renderList();
          }
        }
        a.text += ev.text;
        renderAnswer();
        return true;
      }
      case "verdict": {
        const a = entry(ev.object_id);
        attempts.delete(ev.object_id);
        Object.assign(a, { text: ev.description, verdict: ev.verdict, iou: ev.iou, note: ev.note || null, attempts: ev.attempts, describing: false, waiting: false, failed: null });
        render();
        changed();
        return true;
      }
      case "chat_token": {
        const a = entry(ev.object_id);
        const last = a.chat[a.chat.length - 1];
        if (last && last.role === "assistant" && !last.done) last.text += ev.text;
        else a.chat.push({ role: "assistant", text: ev.text, done: false });
        renderAnswer();
        return true;
      }
      case "chat_done": {
        const a = entry(ev.object_id);
        const last = a.chat[a.chat.length - 1];
        if (last && last.role === "assistant") {
          last.text = ev.answer;
          last.done = true;
        } else a.chat.push({ role: "assistant", text: ev.answer, done: true });
        renderAnswer();
        return true;
      }
      case "refine_click":
      case "refine_done":
        for (const fn of refineListeners) fn(ev);
        return true;
      case "find_progress":
        for (const fn of findListeners) fn(ev);
        return true;
      case "find_result":
        if (ev.count != null) {
          // Find-all: the count is the answer (agent.js shows it), not an error.
          for (const fn of findListeners) fn(ev);
          return true;
        }
        // What it came to is the Find box's to say (finding.js).
        for (const fn of foundListeners) fn(ev);
        return true;
      case "error": {
        // A refused Stop too (the object or its auto-refine is gone): the page's Stop goes.
        if (ev.request === "auto_refine" || ev.request === "stop_refine") for (const fn of refineListeners) fn(ev);
        if (ev.request === "find_all" || ev.request === "stop_find") for (const fn of findListeners) fn(ev);
        if (ev.request === "find") for (const fn of foundListeners) fn(ev);
        if (ev.object_id != null && removedHere.has(ev.object_id)) return true;
        // Live's notice on connecting that descriptions are off: the page's notice says it already.
        if (ev.code === "vlm_off" && ev.request == null && ev.object_id == null) return true;
        const a = ev.object_id != null ? answers.get(ev.object_id) : null;
        // No description (or no rest of it) is coming: the panel says it failed, and why. A
        // question that will get no (rest of its) answer: the reason is its answer, or marks the
        // half answer cut off. Said once (shownId): in the error box only when the panel does
        // not show the object, or when it is no object's answer.
        let said = false;
        // Not a click's: a refine click dropped (slow_down) leaves its description streaming; a
        // new object's describe refused at its click says request "describe" (Live's session.py).
        if (a && a.describing && [null, undefined, "describe"].includes(ev.request)) {
          fail(a, ev.message);
          said = true;
        }
        if (a && (ev.request === "chat" || ev.request == null) && cutAnswer(a, ev.message)) {
          renderAnswer();
          said = true;
        }
        if (!(said && shown(ev.object_id))) onError(ev.message);
        return true;
      }
      default:
        return false; // not an object event: the mode's own message
    }
  }

  function setNote(text) {
    note = text || null;
    renderAnswer();
  }

  function fail(a, reason) {
    Object.assign(a, { describing: false, waiting: false, failed: reason });
    render();
  }

  // A description or answer whose stream ended (or broke) without its end: what stopped, and
  // what to do.
  const LOST = "the connection was lost";
  const stopped = (what, again) => `${what} stopped before it finished (${LOST}): ${again}`;
  const RECONNECTED = "ask again once the status says connected"; // Live reconnects by itself

  // Descriptions of `ids` still "describing" that will get no verdict (their connection was
  // lost): their verdict lines say so, not "describing…" for good. Answers the error box's
  // sentence for those the panel does not show, or null.
  function cutShort(ids) {
    const cut = ids.filter(describing);
    for (const id of cut) fail(answers.get(id), LOST);
    const unseen = cut.filter((id) => !shown(id));
    return unseen.length ? stopped(`the description of object ${unseen.join(", ")}`, "press Describe to try again") : null;
  }

  // Questions still waiting for (the rest of) their answer when Live's connection went: the
  // answer says so and how to ask again, not "thinking…" (or half an answer) for good. Answers
  // the error box's sentence for those the panel does not show, or null.
  function cutQuestions() {
    const cut = [...answers].filter(([, a]) => cutAnswer(a, `${LOST}: ${RECONNECTED}`)).map(([id]) => id);
    if (cut.length) renderAnswer();
    const unseen = cut.filter((id) => !shown(id));
    return unseen.length ? stopped(`the answer about object ${unseen.join(", ")}`, RECONNECTED) : null;
  }

  return {
    apply,
    onRefine: (fn) => refineListeners.push(fn),
    onChange: (fn) => changeListeners.push(fn),
    onObjects: (fn) => listListeners.push(fn),
    onFind: (fn) => findListeners.push(fn),
    // A checked Find's answer came: its find_result, or its error (null: the connection is lost).
    onFound: (fn) => foundListeners.push(fn),
    atVlm,
    setObjects,
    restore,
    upsert,
    select,
    clear,
    asked,
    requested,
    note: setNote,
    // The objects the picture drawn now does not show (the stage's onAbsent): their rows say so.
    // A picture a moment later that shows the same ones (Live, a clip playing) redraws nothing.
    absent(ids) {
      const now = new Set(ids.filter((id) => objects.some((o) => o.id === id)));
      if (now.size === absent.size && [...now].every((id) => absent.has(id))) return;
      absent = now;
      rows.markAbsent();
    },
    isAbsent,
    // Describe buttons disabled with this reason as their tooltip (null: enabled).
    describeOff(reason) {
      describeOff = reason || null;
      render(); // a failed description's line says whether Describe tries again now
    },
    selected: () => selected,
    // The person pressed Clear objects; clears(): how many times so far.
    clearing() { clears += 1; },
    clears: () => clears,
    // Run a description's stream (`run`); if it ends, or breaks, with the object still
    // "describing" (a connection lost mid-way: no verdict and no error came), say so instead of
    // leaving "describing…" up for good. Only while `stillShown()` (client.js whileShown).
    // A refusal (thrown) is why it failed.
    async describing(id, run, stillShown) {
      const mine = () => removedHere.has(id); // how it ends is not said: the person removed it
      requested(id);
      try {
        await run();
      } catch (e) {
        if (!stillShown()) return; // the item was left: its refusal is not said over another
        const a = answers.get(id);
        if (!a || !a.describing) {
          if (mine()) return;
          throw e;
        }
        fail(a, String((e && e.message) || e));
        if (!shown(id) && !mine()) throw e; // the error box says it (the shell's refusal)
      } finally {
        const unseen = stillShown() ? cutShort([id]) : null;
        if (unseen && !mine()) onError(unseen);
      }
    },
    // Run a question's stream (`run`); if it ends, or breaks, with the answer still open (a
    // refusal before it streamed, a connection lost mid-way), the answer says why instead of
    // "thinking…" for good (and Ask, which waits for it, is free again). Only while `stillShown()`.
    // A refusal (thrown) goes on to the error box only when the panel does not show the object,
    // and neither is said for an object the person removed.
    async questioning(id, run, stillShown) {
      let refused = null;
      try {
        await run();
      } catch (e) {
        refused = e;
      }
      const why = refused ? String(refused.message || refused) : stopped("the answer", "ask again");
      const a = answers.get(id);
      const cut = stillShown() && a && cutAnswer(a, why);
      if (cut) renderAnswer();
      if ((cut && shown(id)) || removedHere.has(id)) return;
      if (refused && stillShown()) throw refused; // else the item was left: not said over another
      if (cut) onError(stopped(`the answer about object ${id}`, "ask again"));
    },
    // The connection that carried descriptions is gone (Live's websocket): none of them is coming.
    connectionLost() {
      for (const fn of foundListeners) fn(null); // a Find under way gets no answer either
      // Nor an auto-refine or a find-all: their Stop goes, and they say why they stopped.
      const lost = { type: "error", code: "connection_lost", object_id: null, message: `stopped: ${LOST}` };
      for (const fn of [...refineListeners, ...findListeners]) fn(lost);
      const unseen = [cutQuestions(), cutShort([...answers.keys()])].filter(Boolean);
      if (unseen.length) onError(unseen.join("; "));
    },
    // The person removed object `id` here (kept: true, the remove did not happen after all).
    removing(id, kept = false) {
      if (kept) removedHere.delete(id);
      else removedHere.add(id);
    },
    // Whether the person removed object `id` here (Remove, Clear objects), or is removing it.
    forgotten: (id) => removedHere.has(id),
    // The object a question is about: the selected one, else the one described last.
    target: shownId,
    answering,
    has: (id) => objects.some((o) => o.id === id),
    get: (id) => objects.find((o) => o.id === id) || null,
    all: () => objects.slice(),
  };
}
