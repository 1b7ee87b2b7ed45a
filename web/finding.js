// The Find box: what it asks (a phrase to find, or a count for Find all), and a checked Find
// running until its answer: a line under the box says so, and Find is disabled meanwhile.

import { el, plural } from "./dom.js";

// A phrase as the server keeps it: pydantic trims Unicode White_Space, which has U+0085 (NEL)
// that JS's trim() leaves.
const WHITE_SPACE = "[\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const SERVER_TRIM = new RegExp(`^${WHITE_SPACE}+|${WHITE_SPACE}+$`, "g");
const serverTrimmed = (phrase) => phrase.replace(SERVER_TRIM, "");

// store: the object store (its onFound: a checked Find's answer); call(method, ...args): the
// shell's mode action (false: refused at once; true: its answer comes as events, Live; else a
// promise, settled with its answer, Clip and Image); onBusy(): whether Find is busy changed;
// onItemChange(fn): fn runs when the mode or the item it shows changes (shell.onItemChange).
export function createFindBox({ doc, store, call, clearError, showError, onBusy, onItemChange }) {
  const form = doc.querySelector("#find-form");
  const input = doc.querySelector("#find-input");
  // A checked Find runs until its answer (its find_result or error in every mode; Clip's and
  // Image's request settling too).
  const findPending = el("p", { class: "find-pending", "data-testid": "find-pending", role: "status", hidden: "" });
  form.after(findPending);
  // The running Find: {phrase, byEvent, ended}, its own token (an older one settling later
  // leaves it alone), or null. byEvent: its answer is an event (Live's websocket), not its
  // request settling (Clip, Image). ended: what the line says once it is answered (outcome),
  // else nothing.
  let findingNow = null;
  function finding(phrase, ended = null) {
    findingNow = phrase == null ? null : { phrase, byEvent: false, ended: null };
    const line = phrase == null ? ended : `finding "${phrase}"… (the VLM checks each candidate)`;
    findPending.textContent = line || "";
    findPending.hidden = !line;
    findPending.classList.toggle("ended", phrase == null && !!line);
    store.atVlm("find", phrase == null ? null : `Find of "${phrase}"`);
    onBusy();
  }

  // Another mode, clip or image: the running Find's answer, if one is coming, is not for what
  // the page shows now (the modes drop it, and its refusal: item.js find), so Find is free, as
  // Find all and Auto-refine are (agent.js).
  onItemChange(() => finding(null));

  // A Live Find ends on its own answer only: its find_result or error names the phrase it
  // answers (as the server keeps it, trimmed), so another Find's answer arriving late leaves the
  // running one waiting. What the page cannot tell apart: two Finds of the same phrase. The
  // connection lost (null): no answer is coming.
  // What a Find came to is an answer, not an error: nothing found, candidates the VLM did not
  // accept, the objects cleared while it ran (the person's own doing). The line says it, until
  // the next Find or count, or another item. A late answer of an earlier Find goes to the error
  // box, as no line waits for it.
  store.onFound((ev) => {
    const mine = findingNow;
    const answer = ev != null && ev.type === "find_result";
    if (mine == null || (ev != null && ev.phrase != null && ev.phrase !== serverTrimmed(mine.phrase))) {
      const line = answer ? outcome(ev.phrase, ev) : null;
      if (line && !ev.cleared) showError(line);
      return;
    }
    if (answer) mine.ended = outcome(mine.phrase, ev);
    if (!mine.byEvent) return; // its request settling ends it (submit)
    if (ev == null) showError(`the Find of "${mine.phrase}" stopped before its answer (the connection was lost): find again once the status says connected`);
    finding(null, mine.ended);
  });

  // What a Find of `phrase` came to (its find_result), for its line; null when the objects it
  // lists say it all.
  function outcome(phrase, ev) {
    if (ev.cleared) return `the Find of "${phrase}" ${ev.message}`;
    if (!ev.objects.length) return ev.message || `nothing matching "${phrase}" was found`;
    return ev.message ? `found ${plural(ev.objects.length, "object")}; ${ev.message}` : null;
  }

  // What the Find box asks: {phrase, count}. A question for a count ("how many cups?", "find
  // all: cups", "count the cups": the openings streamer/objects/find_all.py's count_phrase
  // takes off) goes to Find all as it is; anything else is a phrase to find, less a "Find:"
  // before it.
  let asksCount = null; // the server's rule (capabilities.count_pattern), once it has answered
  function query() {
    const text = input.value;
    if (asksCount && asksCount.test(text)) return { phrase: text.trim(), count: true };
    return { phrase: text.replace(/^\s*find:\s*/i, "").trim(), count: false };
  }
  let countAll = null; // Find all (agent.js: countWith)

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const { phrase, count } = query();
    if (!phrase) return;
    clearError();
    if (findingNow == null) finding(null); // the last Find's line goes with the next one, or a count
    if (count && countAll) countAll(phrase);
    else if (findingNow == null) {
      finding(phrase);
      const mine = findingNow;
      const answered = call("find", phrase);
      if (answered === false) finding(null);
      else if (answered === true) mine.byEvent = true;
      else answered.then(() => { if (findingNow === mine) finding(null, mine.ended); });
    }
  });

  return {
    query,
    // Why Find is busy (a checked Find waits for its answer), or null.
    busy: () => (findingNow ? `finding "${findingNow.phrase}": wait for its answer` : null),
    countWith(fn) {
      countAll = fn;
    },
    // The server's rule for a question that asks for a count (capabilities.count_pattern).
    countPattern(pattern) {
      asksCount = new RegExp(pattern, "i");
    },
  };
}
