// The console's only script: refreshes the overview's live part every two seconds.
// Everything it shows is rendered by the server; without JavaScript the page still works,
// it just does not refresh on its own.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const url = live.dataset.refresh;
  const stamp = document.createElement("p");
  stamp.id = "refreshed";
  live.before(stamp);
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (r.ok) {
        live.innerHTML = await r.text();
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
      } else {
        stamp.textContent = "refresh failed: HTTP " + r.status;
      }
    } catch (e) {
      stamp.textContent = "refresh failed: this instance does not answer";
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, 2000);
})();
