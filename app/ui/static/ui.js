// Kiln dashboard: the upload with a progress bar (drag and drop or a chosen file). Loaded as a
// file (the CSP allows no inline script); htmx does the live refreshes.
(function () {
  "use strict";

  function setUpUpload() {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var input = document.getElementById("file");
    var zone = document.getElementById("dropzone");
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");

    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        status.textContent = event.dataTransfer.files[0].name + " chosen";
      }
    });

    form.addEventListener("submit", function (event) {
      if (!input.files.length) return;
      event.preventDefault();
      var request = new XMLHttpRequest();
      request.open("POST", form.action);
      request.setRequestHeader("X-CSRF-Token", form.elements.csrf_token.value);
      bar.hidden = false;
      bar.value = 0;
      status.textContent = "Uploading…";
      request.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round((100 * e.loaded) / e.total);
          status.textContent = "Uploading… " + bar.value + " %";
        }
      });
      request.addEventListener("load", function () {
        if (request.status < 400) {
          bar.value = 100;
          status.textContent = "Uploaded";
          window.location.assign(request.responseURL);
        } else {
          document.open();
          document.write(request.responseText);
          document.close();
        }
      });
      request.addEventListener("error", function () {
        status.textContent = "The upload failed: the connection was lost.";
      });
      request.send(new FormData(form));
    });
  }

  document.addEventListener("DOMContentLoaded", setUpUpload);
})();
