// The image upload with a progress bar: the same form POST, sent by XMLHttpRequest so that the
// browser reports how much has gone; the server's answer (the job page, or the form with its
// errors) replaces the page. Without JavaScript the form posts as usual.
(function () {
  "use strict";
  const form = document.getElementById("image-upload-form");
  const bar = document.getElementById("upload-progress");
  if (!form || !bar) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const request = new XMLHttpRequest();
    const inner = bar.querySelector(".progress-bar");
    bar.hidden = false;
    request.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) { return; }
      const percent = Math.floor(100 * e.loaded / e.total);
      inner.style.width = percent + "%";
      inner.textContent = percent + " % of " + Math.round(e.total / 1048576) + " MiB";
    });
    request.addEventListener("load", function () {
      if (request.responseURL && request.responseURL !== window.location.href) {
        window.location.assign(request.responseURL);
      } else {
        document.open(); document.write(request.responseText); document.close();
      }
    });
    request.addEventListener("error", function () { inner.textContent = "upload failed: try again"; });
    request.open("POST", form.action || window.location.href);
    request.send(new FormData(form));
  });
})();
