// A little help for pages that work without it: no double taps, focus on errors.
document.addEventListener("submit", function (e) {
  var form = e.target;
  if (form.dataset.sent) { e.preventDefault(); return; }
  form.dataset.sent = "1";
  setTimeout(function () {
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  }, 0);
});
document.addEventListener("DOMContentLoaded", function () {
  var err = document.querySelector("[aria-invalid=true]");
  if (err) { err.focus(); err.select && err.select(); }
});
