// compute dashboard: live updates, selection helpers and confirmations.
// The page works without this file; it only adds live refreshes.
(function () {
  "use strict";
  const body = document.body;

  // Live: the server streams journal events (server-sent events); on each,
  // fetch this page again and swap the parts marked data-live-part, at most
  // once a second, so counts and a job's status follow without a reload.
  const feed = body.dataset.live;
  if (feed && window.EventSource) {
    const dot = document.getElementById("live-dot");
    let pending = false, last = 0;
    const refresh = async function () {
      pending = false;
      last = Date.now();
      try {
        const res = await fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" });
        if (!res.ok) { return; }
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        document.querySelectorAll("[data-live-part]").forEach(function (el) {
          const fresh = doc.getElementById(el.id);
          if (fresh) { el.replaceWith(fresh); }
        });
        body.dataset.refreshed = String((Number(body.dataset.refreshed) || 0) + 1);
      } catch (e) {
        // A failed refresh waits for the next event.
      }
    };
    const source = new EventSource(feed);
    source.onopen = function () { if (dot) { dot.classList.add("on"); } body.dataset.liveOpen = "1"; };
    source.onerror = function () { if (dot) { dot.classList.remove("on"); } };
    source.onmessage = function () {
      if (pending) { return; }
      pending = true;
      setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
    };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // Select every job on the page.
  const all = document.getElementById("select-page");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input[name="id"][form="bulk"]').forEach(function (box) { box.checked = all.checked; });
      updateBulk();
    });
  }
  const updateBulk = function () {
    const any = document.querySelector('input[name="id"][form="bulk"]:checked') !== null;
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
