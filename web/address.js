// The page's address names what is shown, #<mode> or #<mode>/<id> (the clip or image open), so a
// reload comes back to it and Back / Forward move between what was shown (a plain address: the
// tab the page marks as selected). The item a mode shows is its stage media's data-<mode>-id
// (clip.js and image.js set it when one shows, remove it when it goes); opening one by id goes
// through its library (library.js: the shell's addLibrary).

// modes, libraries: the shell's maps (mode -> actions, mode -> {open(id)}); active(): the mode
// shown; switchMode(name, push): show a mode; showError(message).
export function createAddress({ doc, modes, libraries, active, switchMode, showError }) {
  const home = (doc.querySelector('[data-mode][aria-selected="true"]') || doc.querySelector("[data-mode]")).dataset.mode;
  function shownItem(mode) {
    const media = doc.querySelector(`#stage > [data-for="${mode}"]`);
    return (media && media.getAttribute(`data-${mode}-id`)) || null;
  }
  const addressOf = (mode) => (shownItem(mode) ? `#${mode}/${shownItem(mode)}` : `#${mode}`);
  // {mode, id|null} of an address; null when it names no mode of this page.
  function readAddress(hash) {
    if (!hash || hash === "#") return { mode: home, id: null };
    const [mode, ...rest] = hash.slice(1).split("/");
    if (!modes.has(mode)) return null;
    return { mode, id: rest.join("/") || null };
  }
  // push: a step Back undoes, else it takes the place of the address.
  function writeAddress(push) {
    const want = addressOf(active());
    if (location.hash === want) return;
    if (push) history.pushState(null, "", want);
    else history.replaceState(null, "", want);
  }
  // Show what an address names (at start, and on Back / Forward): its mode, and its item opened
  // unless shown already. An item the server no longer has: the mode, and the server's reason.
  function goTo(hash) {
    const to = readAddress(hash);
    if (!to) {
      switchMode(home, false);
      showError(`the address ${hash} names nothing on this page: it shows ${home} instead`);
      writeAddress(false);
      return;
    }
    switchMode(to.mode, false);
    const library = libraries.get(to.mode);
    if (!to.id || !library || to.id === shownItem(to.mode)) {
      writeAddress(false); // nothing to open: it names what is shown
      return;
    }
    library.open(encodeURIComponent(to.id)).catch((e) => {
      if (active() !== to.mode) return; // the person has moved on meanwhile
      showError(e.message);
      writeAddress(false);
    });
  }
  window.addEventListener("popstate", () => goTo(location.hash));
  // An item shown in place of another (an upload, an open from the library) is a step Back
  // undoes; the first one in a mode, or one going (deleted), takes the place of the address.
  const itemShown = new MutationObserver(() => {
    const had = readAddress(location.hash);
    writeAddress(!!(had && had.mode === active() && had.id && shownItem(active())));
  });
  for (const media of doc.querySelectorAll("#stage > [data-for]")) {
    itemShown.observe(media, { attributeFilter: [`data-${media.dataset.for}-id`] });
  }

  return {
    // Show what the address `hash` names, else the home tab (with why).
    goTo,
    write: writeAddress,
  };
}
