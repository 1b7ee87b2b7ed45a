// The DOM helpers the page's modules share: an element made with its attributes, a list drawn
// anew that keeps the keyboard focus where it was, and a model's text made fit to show.

// Text a model wrote (a label, a description) may hold control characters (a junk model's bytes,
// a bidi override that reorders what follows): each run of them is shown as a space, not raw.
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]+/g;
export const printable = (text) => String(text).replace(CONTROLS, " ");

// "1 object", "2 objects": a count in words (workers/words.py plural).
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// The second click of a double-click (e.detail counts the clicks in a row; a key press gives 0):
// on a button that took another's place, or that now names something else, it is no press.
export const secondClick = (e) => e.detail > 1;

// A DOM element with attributes and text, for the modes' toolbars.
export function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

// Draw a list anew (`draw` replaces its rows) keeping the keyboard focus where it was: on the row
// with the same key (`keyAttr`, the attribute that names a row), on the same control of it (its
// data-testid). A list redrawn on a server event (a description's words, a new object, a
// library refresh) would otherwise drop the focus to the page: Tab starts over, and Delete
// removed the selected object instead of the row the person was on.
export function redrawKeepingFocus(list, keyAttr, draw) {
  const a = document.activeElement;
  const row = a && list.contains(a) ? a.closest(`[${keyAttr}]`) : null;
  const key = row ? row.getAttribute(keyAttr) : null;
  const part = row && a !== row ? a.getAttribute("data-testid") : null;
  draw();
  if (key == null) return;
  const again = [...list.querySelectorAll(`[${keyAttr}]`)].find((r) => r.getAttribute(keyAttr) === key);
  if (!again) return; // the row went (removed): the focus stays where the page put it
  const control = part ? again.querySelector(`[data-testid="${part}"]`) : null;
  // A control now disabled (Describe while the VLM is down) cannot hold the focus: its row does.
  (control && !control.disabled ? control : again).focus({ preventScroll: true }); // no jump
}
