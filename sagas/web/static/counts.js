// Keeps the list's per-state counts live: every 5 s, /api/counts replaces the numbers the
// server rendered (the page works without it; nothing else on the dashboard uses script).
(function () {
  var box = document.getElementById("counts");
  if (!box || !window.fetch) return;
  function refresh() {
    fetch(box.dataset.url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (c) {
        if (!c) return;
        var values = Object.assign({ total: c.total, parked: c.parked }, c.by_state);
        box.querySelectorAll("[data-count]").forEach(function (el) {
          var v = values[el.dataset.count];
          if (v !== undefined) el.textContent = v;
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 5000);
})();
