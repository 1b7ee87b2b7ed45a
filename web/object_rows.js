// The object list's rows, drawn from the object store's state: each object's colour, label (and
// what the VLM said when Find kept it anyway), Describe and Remove, and whether the picture on
// the stage shows it now.

import { printable, redrawKeepingFocus } from "./dom.js";
import { colorFor, css } from "./overlay.js";

// list: the <ul> drawn into; onAction(method, id): a row's button (describe, remove);
// select(id): a row selected (null: deselected); isAbsent(id): the picture on the stage does not
// show it; isDescribing(id): its description is asked for or streaming (the server refuses
// another meanwhile).
export function createObjectRows({ list, onAction, select, isAbsent, isDescribing }) {
  function button(text, testid, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("data-testid", testid);
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      onClick();
    });
    return b;
  }

  // objects: [{id, label, find_check}]; selected: its id or null; describeOff: why Describe is
  // disabled, or null.
  function drawList(objects, selected, describeOff) {
    list.replaceChildren();
    for (const o of objects) {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "object-item");
      li.dataset.objectId = String(o.id);
      li.classList.toggle("selected", o.id === selected);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = css(colorFor(o.id));
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `#${o.id} ${printable(o.label)}`;
      if (o.find_check && o.find_check !== "match") {
        // Kept although the VLM said no (or neither) when Find checked it.
        label.textContent += o.find_check === "no_match" ? " (VLM: not a match)" : " (VLM: unsure)";
        li.dataset.findCheck = o.find_check;
      }
      const describe = button("Describe", "object-describe", () => {
        select(o.id);
        onAction("describe", o.id);
      });
      const why = describeOff || (isDescribing(o.id) ? "being described: wait for its verdict" : null);
      if (why) {
        describe.disabled = true;
        describe.title = why;
      }
      // The list cuts a long label short: the whole of it is the row's tooltip.
      label.title = label.textContent;
      const remove = button("Remove", "object-remove", () => onAction("remove", o.id));
      // Named for a screen reader with the object they act on: every row has the same two.
      describe.setAttribute("aria-label", `Describe #${o.id}`);
      remove.setAttribute("aria-label", `Remove #${o.id}`);
      // The buttons stacked in a narrow column: the label keeps the row's width to be read in.
      const actions = document.createElement("span");
      actions.className = "actions";
      actions.append(describe, remove);
      li.append(swatch, label, actions);
      markAbsent(li);
      // A row selects as a click on it does from the keyboard too (Tab to it, Enter or Space).
      // (Not a listbox option: the row holds buttons. The selected row is the current one.)
      li.tabIndex = 0;
      if (o.id === selected) li.setAttribute("aria-current", "true");
      const toggle = () => select(o.id === selected ? null : o.id);
      li.addEventListener("click", toggle);
      li.addEventListener("keydown", (e) => {
        if (e.target !== li || (e.key !== "Enter" && e.key !== " ")) return;
        e.preventDefault();
        toggle();
      });
      list.append(li);
    }
  }

  // An object whose mask and box vanished from the stage (absent): its row says so, and how to
  // get it back, in every mode (a click with it selected re-finds it: shell.js). Patched in
  // place, not drawn anew: Live and a clip playing change it frame by frame, and a row drawn anew
  // under a click loses it.
  function markAbsent(li) {
    const note = li.querySelector(".absent");
    if (!isAbsent(Number(li.dataset.objectId))) {
      if (note) note.remove();
      return;
    }
    const text = "not found in the picture now: select it and click where it is";
    if (note) {
      if (note.textContent !== text) note.textContent = text;
      return;
    }
    const why = document.createElement("span");
    why.className = "absent";
    why.setAttribute("data-testid", "object-absent");
    why.textContent = text;
    li.append(why);
  }

  return {
    draw: (objects, selected, describeOff) => redrawKeepingFocus(list, "data-object-id", () => drawList(objects, selected, describeOff)),
    // Which rows' objects the picture shows changed: their notes, patched in place.
    markAbsent: () => {
      for (const li of list.children) markAbsent(li);
    },
  };
}
