// The clip library: every clip the server keeps (they survive restarts), newest first, with a
// thumbnail, name, length and state. Opening one restores its objects, masks and descriptions;
// delete removes its files and rows. What retention removed, and why, is said under the list.
import { json, request } from "./client.js";
import { el } from "./shell.js";

export function createLibrary(shell, { open, closed }) {
  const root = el("section", { "data-testid": "library", "data-for": "clip", class: "library", "aria-label": "Clip library", hidden: "" });
  const title = el("h2", {}, "Library");
  const list = el("ul", { class: "library-list" });
  const notes = el("div", { "data-testid": "library-removed", class: "library-removed" });
  root.append(title, list, notes);
  document.querySelector("#clip-tools").after(root);
  document.head.append(el("link", { rel: "stylesheet", href: "/library.css" }));

  const length = (s) => (s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`);

  function item(c) {
    const li = el("li", { "data-testid": "library-item", "data-id": c.id, "data-state": c.state, class: "library-item" });
    const thumb = el("img", { src: `/api/clips/${c.id}/thumbnail.jpg`, alt: "", width: "80", loading: "lazy" });
    const name = el("span", { class: "name" }, c.filename);
    const meta = el("span", { class: "meta" }, `${length(c.duration_s)} · ${c.objects} object(s) · ${c.state}`);
    const openBtn = el("button", { type: "button", "data-testid": "library-open" }, "Open");
    const delBtn = el("button", { type: "button", "data-testid": "library-delete" }, "Delete");
    openBtn.addEventListener("click", () => open(c.id).catch((e) => shell.showError(e.message)));
    delBtn.addEventListener("click", async () => {
      try {
        await request("DELETE", `/api/clips/${c.id}`);
        closed(c.id);
        await refresh();
      } catch (e) {
        shell.showError(e.message);
      }
    });
    const text = el("div", { class: "text" });
    text.append(name, meta);
    li.append(thumb, text, openBtn, delBtn);
    return li;
  }

  async function refresh() {
    let body;
    try {
      body = await json("GET", "/api/clips");
    } catch (e) {
      shell.showError(e.message);
      return;
    }
    list.replaceChildren(...body.clips.map(item));
    if (!body.clips.length) list.append(el("li", { class: "library-empty" }, "No clips yet: upload one."));
    notes.replaceChildren(...body.removed.map((r) => el("p", { "data-id": r.id }, `Removed ${r.filename}: ${r.reason}.`)));
  }

  return { refresh };
}
