// Progressive enhancement only: every page works without this script.
// Live counts from the dashboard's server-sent events (/events), which the
// server wakes from ReadLog(follow) or by polling the flags.
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var first = null;
  var source = new EventSource("/events");
  source.addEventListener("counts", function (e) {
    var data;
    try { data = JSON.parse(e.data); } catch (err) { return; }
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var k = el.getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(data, k)) { el.textContent = String(data[k]); }
    });
    if (first === null) { first = data.open_flags; return; }
    var notice = document.getElementById("live-notice");
    if (notice && data.open_flags > first) {
      notice.hidden = false;
      notice.textContent = (data.open_flags - first) + " new open flag(s) since this page was loaded. Reload to see them.";
    }
  });
})();
