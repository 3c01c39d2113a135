// Progressive: the pages work without this. It shows times in the reader's zone and
// keeps a live note up to date (polling its fragment every second).
"use strict";
document.querySelectorAll("time[data-local]").forEach(function (time) {
  var when = new Date(time.getAttribute("datetime"));
  var span = time.nextElementSibling;
  if (isNaN(when) || !span) { return; }
  span.textContent = "(your time: " + when.toLocaleString([], {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short"}) + ")";
  span.hidden = false;
});
(function () {
  var note = document.getElementById("note");
  if (!note || !note.dataset.live) { return; }
  var url = note.dataset.live, shown = null, stopped = false, etag = null;
  function poll() {
    var headers = etag ? {"If-None-Match": etag} : {};
    fetch(url, {cache: "no-store", credentials: "same-origin", headers: headers}
    ).then(function (response) {
      if (response.status === 304) { return; }  // unchanged since the last look
      if (!response.ok) { throw new Error(String(response.status)); }
      var open = response.headers.get("X-Sitting-Open") === "1";
      etag = response.headers.get("ETag");
      return response.text().then(function (text) {
        if (shown === null) { shown = note.innerHTML; }
        if (text !== shown) {
          // Server-rendered, allow-list sanitized HTML of this same page.
          note.innerHTML = text;
          shown = note.innerHTML;
        }
        if (!open) { stopped = true; document.documentElement.dataset.closed = "1"; }
      });
    }).catch(function () { /* try again at the next tick */ }).then(function () {
      if (!stopped) { setTimeout(poll, 1000); }
    });
  }
  setTimeout(poll, 1000);
})();
