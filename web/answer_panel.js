// How an object's answer is shown: its description and chat as they stream in, in the answer box
// (following the newest words unless the person scrolled up to read), and the verdict line under
// it (waiting, describing, checking, failed and why, or the verdict and its IoU). objects.js keeps
// the answers and says which one shows; this draws it.

import { printable } from "./dom.js";

// answer, verdict: the elements it draws into.
export function createAnswerPanel({ answer, verdict }) {
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

  // describeOff: why Describe is disabled (the VLM does not answer), or null. othersAtVlm: what
  // else of this page's the VLM works on now (objects.js atVlmBesides), which goes first.
  function verdictLine(a, describeOff, othersAtVlm) {
    if (a.waiting) return `waiting for the VLM…${othersAtVlm.length ? ` (ahead of it: this page's ${othersAtVlm.join(", ")})` : ""}`;
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

  // Show object `id`'s answer `a` (objects.js's entry, or null when it has none yet) under
  // `note` (a standing note, or null).
  function show(id, a, note, describeOff, othersAtVlm) {
    const paras = note ? [["note", "answer-note", note]] : [];
    if (!a) {
      showParagraphs(paras);
      verdict.dataset.verdict = "pending";
      verdict.textContent = "";
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
    verdict.textContent = verdictLine(a, describeOff, othersAtVlm);
    followNewest(id);
  }

  return { show };
}
