// compute dashboard: live updates, selection helpers and confirmations.
// The page works without this file; it only adds live refreshes.
(function () {
  "use strict";
  const body = document.body;

  // Live: the server streams journal events (server-sent events); on each,
  // fetch this page again and swap the parts marked data-live-part, at most
  // once a second, so counts and a job's status follow without a reload.
  // A feed holds one of the six HTTP/1.1 connections a browser opens to a
  // server, so a tab in the background closes it: six hidden dashboard tabs
  // would otherwise stall every other page of the site. Shown again, the
  // tab refreshes its live parts and follows from the fresh page's cursor.
  const feed = body.dataset.live;
  if (feed && window.EventSource) {
    const dot = document.getElementById("live-dot");
    let source = null, pending = false, last = 0;
    const refresh = async function () {
      pending = false;
      last = Date.now();
      try {
        const res = await fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" });
        if (!res.ok) { return null; }
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        document.querySelectorAll("[data-live-part]").forEach(function (el) {
          const fresh = doc.getElementById(el.id);
          if (fresh) { el.replaceWith(fresh); }
        });
        body.dataset.refreshed = String((Number(body.dataset.refreshed) || 0) + 1);
        return doc;
      } catch (e) {
        return null; // a failed refresh waits for the next event
      }
    };
    const open = function (url) {
      source = new EventSource(url);
      source.onopen = function () { if (dot) { dot.classList.add("on"); } body.dataset.liveOpen = "1"; };
      source.onerror = function () { if (dot) { dot.classList.remove("on"); } };
      source.onmessage = function () {
        if (pending) { return; }
        pending = true;
        setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
      };
    };
    const close = function () {
      if (source) { source.close(); source = null; }
      if (dot) { dot.classList.remove("on"); }
      delete body.dataset.liveOpen;
    };
    let showing = 0; // counts the times the tab was shown, so a stale catch-up opens nothing
    document.addEventListener("visibilitychange", async function () {
      if (document.visibilityState === "hidden") { close(); return; }
      if (source && source.readyState !== EventSource.CLOSED) { return; }
      if (source) { close(); } // refused (503) or ended for good: EventSource does not retry those
      const shown = ++showing;
      const doc = await refresh();
      if (shown !== showing || document.visibilityState === "hidden" || source) { return; }
      open((doc && doc.body.dataset.live) || feed);
    });
    if (document.visibilityState !== "hidden") { open(feed); }
    window.addEventListener("pagehide", close);
  }

  // Select every job on the page.
  const all = document.getElementById("select-page");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input[name="job"][form="bulk"]').forEach(function (box) { box.checked = all.checked; });
      updateBulk();
    });
  }
  const updateBulk = function () {
    const any = document.querySelector('input[name="job"][form="bulk"]:checked') !== null;
    document.querySelectorAll("[data-needs-selection]").forEach(function (b) { b.disabled = !any; });
  };
  document.addEventListener("change", function (e) {
    if (e.target && e.target.name === "id") { updateBulk(); }
  });
  updateBulk();

  // Ask before a form marked data-confirm is sent.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
    });
  });
}());
