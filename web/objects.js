// The one object store of the page, for every mode: the object list (ids, labels, descriptions,
// verdicts), the selection, and each object's description and chat as they stream in. It reads
// the shared object events (docs/protocol.md "Object events") the same way whether they came over
// the live websocket, the clip websocket or an NDJSON stream, and renders the panel and (through
// object_rows.js) the list.

import { printable } from "./dom.js";
import { createObjectRows } from "./object_rows.js";

// list, answer, verdict: the elements it renders into. onAction(method, id): a list button
// (describe, remove); onSelect(): the selection changed; onError(message): show an error;
// absentHint(): the shown mode's words on getting back an object its picture does not show;
// onPanel(): the panel was drawn again (the shell's Ask follows whether an answer is streaming).
export function createObjectStore({ list, answer, verdict, onAction, onSelect, onError, absentHint = () => null, onPanel = () => {} }) {
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
  const rows = createObjectRows({ list, onAction, select, isAbsent: (id) => absent.has(id), absentHint, isDescribing: describing });
  function renderList() {
    rows.draw(objects, selected, describeOff);
  }

  // The answer box follows the newest text as it streams in, as a chat window does, unless the
  // person scrolled up to read: then it stays put until they scroll back to the bottom (or another
  // object is shown). autoTop: where the box last scrolled itself, so that scroll (its event comes
  // a frame later, when more words may have come) is not read as the person's.
  let follow = true;
  let autoTop = null;
  let shownId = null;
  answer.addEventListener("scroll", () => {
    if (answer.scrollTop === autoTop) return;
    follow = answer.scrollHeight - answer.scrollTop - answer.clientHeight < 4;
  });
  function followNewest(id) {
    if (id !== shownId) follow = true;
    shownId = id;
    if (!follow || answer.scrollHeight <= answer.clientHeight) return;
    answer.scrollTop = answer.scrollHeight;
    autoTop = answer.scrollTop;
  }

  // The answer's paragraphs, [class, test id or null, text], patched in place rather than drawn
  // anew: a word streaming in (every few milliseconds) rewrites only its own paragraph, so a
  // person selecting or copying the description meanwhile keeps the selection.
  function showParagraphs(paras) {
    paras.forEach(([cls, testid, raw], i) => {
      const text = printable(raw);
      let p = answer.children[i];
      if (!p || p.className !== cls) {
        const fresh = document.createElement("p");
        fresh.className = cls;
        if (p) p.replaceWith(fresh);
        else answer.append(fresh);
        p = fresh;
      }
      if (testid) p.setAttribute("data-testid", testid);
      else p.removeAttribute("data-testid");
      if (p.textContent !== text) p.textContent = text;
    });
    while (answer.children.length > paras.length) answer.lastElementChild.remove();
  }

  function renderAnswer() {
    const id = selected != null ? selected : target;
    const a = id == null ? null : answers.get(id) || null;
    const paras = note ? [["note", "answer-note", note]] : [];
    if (!a) {
      showParagraphs(paras);
      verdict.dataset.verdict = "pending";
      verdict.textContent = "";
      onPanel();
      return;
    }
    paras.push(["description", null, a.text]);
    for (const turn of a.chat) paras.push([`chat ${turn.role}`, null, (turn.role === "user" ? "Q: " : "A: ") + turn.text]);
    // A question asked here and no word of the answer yet: say that it is coming. (Not for one
    // that came back from the server unanswered: no answer is on its way.)
    const last = a.chat[a.chat.length - 1];
    if (last && last.role === "user" && last.asked) paras.push(["chat assistant pending", "answer-pending", "A: thinking…"]);
    showParagraphs(paras);
    verdict.dataset.verdict = a.waiting ? "pending" : a.failed && a.verdict === "pending" ? "failed" : a.verdict;
    verdict.textContent = verdictLine(a);
    followNewest(id);
    onPanel();
  }

  function verdictLine(a) {
    if (a.waiting) return "waiting for the VLM… (this page's other descriptions and answers go first)";
    if (a.verdict === "pending") {
      // Stopped with no verdict: the words shown are all there is, and nothing is checking them.
      // (Describe is disabled while the VLM does not answer: then it says when it comes back.)
      const again = describeOff ? "Describe is back once the VLM answers again" : "press Describe to try again";
      if (a.failed) return `description failed${a.text ? " part-way" : ""}: ${a.failed} · ${again}`;
      // From the request on, not from the first word: the VLM may take a while to start.
      if (a.describing) return a.text ? "describing, then checking it against the mask…" : "describing…";
      return a.text ? "checking…" : "";
    }
    // No IoU: the check itself could not run (grounding failed), so nothing was measured.
    if (a.iou == null) return `${a.verdict} · not checked${a.note ? `: ${a.note}` : ""}`;
    const tries = a.attempts === 1 ? "1 attempt" : `${a.attempts} attempts`;
    return `${a.verdict} · IoU ${Number(a.iou).toFixed(2)} (${tries})`;
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
    objects = infos.map((o) => ({ ...o, label: o.label || `object ${o.id}` }));
    if (selected != null && !objects.some((o) => o.id === selected)) selected = null;
    absent = new Set([...absent].filter((id) => objects.some((o) => o.id === id)));
    for (const id of [...answers.keys()]) {
      if (!objects.some((o) => o.id === id)) answers.delete(id);
    }
    render();
    listed();
    changed();
  }

  // Objects as the server kept them (a clip opened from the library): their descriptions,
  // verdicts and chat come back with them.
  function restore(infos) {
    answers.clear();
    for (const o of infos) {
      if (o.description == null && !(o.chat || []).length) continue;
      answers.set(o.id, {
        text: o.description || "",
        verdict: o.verdict || "pending",
        iou: o.iou == null ? null : o.iou,
        note: o.note || null,
        attempts: o.attempts || 0,
        chat: (o.chat || []).map((t) => ({ role: t.role, text: t.content, done: true })),
      });
    }
    setObjects(infos);
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
        // A new attempt (the previous description missed the object) starts the text over.
        if (attempts.get(ev.object_id) !== ev.attempt) {
          attempts.set(ev.object_id, ev.attempt);
          a.text = "";
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
        for (const fn of foundListeners) fn(ev);
        if (!ev.objects.length) onError(ev.message || `nothing matching "${ev.phrase}" was found`);
        else if (ev.message) onError(ev.message);
        return true;
      case "error": {
        // A refused Stop too (the object or its auto-refine is gone): the page's Stop goes.
        if (ev.request === "auto_refine" || ev.request === "stop_refine") for (const fn of refineListeners) fn(ev);
        if (ev.request === "find_all" || ev.request === "stop_find") for (const fn of findListeners) fn(ev);
        if (ev.request === "find") for (const fn of foundListeners) fn(ev);
        // Live's notice on connecting that descriptions are off: the page's notice says it already.
        if (ev.code === "vlm_off" && ev.request == null && ev.object_id == null) return true;
        const a = ev.object_id != null ? answers.get(ev.object_id) : null;
        // No description (or no rest of it) is coming: the panel says it failed, and why, for
        // as long as it shows; the error box says it only for an object the panel does not show.
        let said = false;
        if (a && a.describing && [null, undefined, "describe", "click"].includes(ev.request)) {
          fail(a, ev.message);
          said = shown(ev.object_id);
        }
        // A question that will get no (rest of its) answer: the reason is its answer, or marks
        // the half answer cut off.
        if (a && (ev.request === "chat" || ev.request == null) && cutAnswer(a, ev.message)) renderAnswer();
        if (!said) onError(ev.message);
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

  // Whether the panel shows object `id` (its verdict line, its answer).
  const shown = (id) => (selected != null ? selected : target) === id;

  function fail(a, reason) {
    Object.assign(a, { describing: false, waiting: false, failed: reason });
    render();
  }

  // Descriptions of `ids` still "describing" that will get no verdict: said, not left up.
  function cutShort(ids) {
    const cut = ids.filter((id) => answers.get(id) && answers.get(id).describing);
    if (!cut.length) return;
    for (const id of cut) fail(answers.get(id), "the connection was lost");
    onError(`the description of object ${cut.join(", ")} stopped before it finished (the connection was lost): press Describe to try again`);
  }

  // Questions still waiting for (the rest of) their answer when the connection that carried it
  // went: the answer says so and how to ask again, not "thinking…" (or half an answer) for good.
  function cutQuestions() {
    const again = "the connection was lost: ask again once the status says connected";
    let cut = false;
    for (const a of answers.values()) cut = cutAnswer(a, again) || cut;
    if (cut) renderAnswer();
  }

  return {
    apply,
    onRefine: (fn) => refineListeners.push(fn),
    onChange: (fn) => changeListeners.push(fn),
    onObjects: (fn) => listListeners.push(fn),
    onFind: (fn) => findListeners.push(fn),
    // A checked Find's answer came: its find_result, or its error (null: the connection is lost).
    onFound: (fn) => foundListeners.push(fn),
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
    // Describe buttons disabled with this reason as their tooltip (null: enabled).
    describeOff(reason) {
      describeOff = reason || null;
      render(); // a failed description's line says whether Describe tries again now
    },
    selected: () => selected,
    // Run a description's stream (`run`); if it ends, or breaks, with the object still
    // "describing" (a connection lost mid-way: no verdict and no error came), say so instead of
    // leaving "describing…" up for good. Only while `stillShown()` (client.js whileShown).
    // A refusal (thrown) is why it failed.
    async describing(id, run, stillShown) {
      requested(id);
      try {
        await run();
      } catch (e) {
        const a = answers.get(id);
        if (!stillShown() || !a || !a.describing) throw e;
        fail(a, String((e && e.message) || e));
        if (!shown(id)) throw e; // else its verdict line says why: not the error box too
      } finally {
        if (stillShown()) cutShort([id]);
      }
    },
    // Run a question's stream (`run`); if it ends, or breaks, with the answer still open (a
    // refusal before it streamed, a connection lost mid-way), the answer says why instead of
    // "thinking…" for good (and Ask, which waits for it, is free again). Only while `stillShown()`.
    async questioning(id, run, stillShown) {
      let why = "the answer stopped before it finished (the connection was lost): ask again";
      try {
        await run();
      } catch (e) {
        why = e.message;
        throw e;
      } finally {
        const a = answers.get(id);
        if (stillShown() && a && cutAnswer(a, why)) renderAnswer();
      }
    },
    // The connection that carried descriptions is gone (Live's websocket): none of them is coming.
    connectionLost() {
      for (const fn of foundListeners) fn(null); // a Find under way gets no answer either
      cutQuestions();
      cutShort([...answers.keys()]);
    },
    // The object a question is about: the selected one, else the one described last.
    target: () => (selected != null ? selected : target),
    answering,
    has: (id) => objects.some((o) => o.id === id),
    get: (id) => objects.find((o) => o.id === id) || null,
    all: () => objects.slice(),
  };
}
