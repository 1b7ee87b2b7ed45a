// The library of one mode (Clip or Image): every clip or image the server keeps for this browser
// (they survive restarts), newest first, with a thumbnail, name, length or size, and state. Opening
// one restores its objects, masks, descriptions and chat; delete removes its files and rows. What
// retention removed, and why, is said under the list.
import { json, request } from "./client.js";
import { newestRequest } from "./item.js";
import { el, plural, redrawKeepingFocus } from "./dom.js";

// What each mode lists: its API and the line under an item's name.
const KINDS = {
  clip: {
    api: "/api/clips",
    list: (body) => body.clips,
    empty: "No clips yet: upload one.",
    meta: (c) => `${length(c.duration_s)} · ${plural(c.objects, "object")} · ${c.state}`,
  },
  image: {
    api: "/api/images",
    list: (body) => body.images,
    empty: "No images yet: upload one.",
    meta: (i) => `${i.width}x${i.height} · ${bytes(i.bytes)} · ${plural(i.objects, "object")} · ${i.state}`,
  },
};

function length(s) {
  return s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
}

function bytes(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1e3))} KB`;
}

export function createLibrary(shell, kind, { open, closed }) {
  const k = KINDS[kind];
  const root = el("section", { "data-testid": "library", "data-for": kind, class: "library", "aria-label": `${kind[0].toUpperCase()}${kind.slice(1)} library`, hidden: "" });
  const title = el("h2", {}, "Library");
  const list = el("ul", { class: "library-list" });
  const notes = el("div", { "data-testid": "library-removed", class: "library-removed" });
  root.append(title, list, notes);
  // Under the stage, not above it: on a laptop a library above pushed the stage down and the clip
  // below the fold. With nothing open the stage is short, so the library shows under it; with a
  // clip open, a button in the toolbar above says how many it holds and scrolls to it. (After the
  // hint in #below: on a narrow screen that is under the panel, style.css.)
  document.querySelector("#below > .hint").after(root);
  const jump = el("button", { type: "button", class: "library-jump", "data-testid": "library-jump", "data-for": kind, hidden: "", title: "Scroll down to the library" }, "Library ↓");
  jump.addEventListener("click", () => root.scrollIntoView({ block: "nearest" }));
  document.querySelector(".shared-tools").append(jump);
  if (!document.querySelector('link[href="/library.css"]')) {
    document.head.append(el("link", { rel: "stylesheet", href: "/library.css" }));
  }

  // Items this page is deleting now: the server may say an item went (a clip's socket) before
  // the DELETE answers, and the person's own delete is not an error to show them.
  const deletingHere = new Set();

  function item(c) {
    const li = el("li", { "data-testid": "library-item", "data-id": c.id, "data-state": c.state, class: "library-item" });
    const thumb = el("img", { src: `${k.api}/${c.id}/thumbnail.jpg`, alt: "", width: "80", loading: "lazy" });
    const name = el("span", { class: "name" }, c.filename);
    const meta = el("span", { class: "meta" }, k.meta(c));
    // Named with the file they act on, for a screen reader (every item has the same two).
    const openBtn = el("button", { type: "button", "data-testid": "library-open", "aria-label": `Open ${c.filename}` }, "Open");
    const delBtn = el("button", { type: "button", "data-testid": "library-delete", "aria-label": `Delete ${c.filename}` }, "Delete");
    openBtn.addEventListener("click", () => open(c.id).catch((e) => shell.showError(e.message)));
    delBtn.addEventListener("click", async () => {
      // Beside Open, one slip would lose the file and all its work for good: ask first.
      if (!window.confirm(`Delete ${c.filename}? Its file, objects and descriptions go from the server for good.`)) return;
      deletingHere.add(c.id);
      try {
        await request("DELETE", `${k.api}/${c.id}`);
        closed(c.id);
        await refresh();
      } catch (e) {
        shell.showError(e.message);
      } finally {
        deletingHere.delete(c.id);
      }
    });
    const text = el("div", { class: "text" });
    text.append(name, meta);
    li.append(thumb, text, openBtn, delBtn);
    return li;
  }

  // Lists asked for overlap (a refresh after a description, another after a delete): only the
  // answer to the newest one is drawn, or an older answer that came late would list again what
  // was just deleted.
  const asked = newestRequest();
  async function refresh() {
    const mine = asked.next();
    let body;
    try {
      body = await json("GET", k.api);
    } catch (e) {
      if (asked.isNewest(mine)) shell.showError(e.message);
      return;
    }
    if (!asked.isNewest(mine)) return;
    const items = k.list(body);
    jump.textContent = `Library (${items.length}) ↓`;
    jump.classList.toggle("empty", !items.length); // nothing to go down to
    redrawKeepingFocus(list, "data-id", () => {
      list.replaceChildren(...items.map(item));
      if (!items.length) list.append(el("li", { class: "library-empty" }, k.empty));
    });
    notes.replaceChildren(...body.removed.map((r) => el("p", { "data-id": r.id }, `Removed ${r.filename}: ${r.reason}.`)));
  }

  // What the list says of the open item (objects, state) follows the page: refreshed shortly
  // after its objects or descriptions change, and when a clip's tracking job ends.
  let soon = null;
  function refreshSoon() {
    if (soon || shell.activeMode() !== kind) return;
    soon = setTimeout(() => {
      soon = null;
      refresh();
    }, 300);
  }
  shell.store.onChange(refreshSoon);
  // The page's address opens an item by id as Open does (a reload, Back and Forward: shell.js).
  shell.addLibrary(kind, { open });

  // deleting(id): this page's own delete of `id` is under way.
  return { refresh, refreshSoon, deleting: (id) => deletingHere.has(id) };
}
