// Reports, in the page's own DOM, whether the image and the video loaded
// and which protocol served the page (read by tests and by curious teachers).
(function () {
  "use strict";

  function report(kind, state) {
    var el = document.getElementById(kind + "-status");
    // First verdict wins: a later error does not overwrite "loaded".
    if (document.body.dataset[kind] === "loaded" || document.body.dataset[kind] === "failed") {
      return;
    }
    el.textContent = kind + ": " + state;
    el.className = state;
    document.body.dataset[kind] = state;
  }

  var img = document.getElementById("pizza");
  img.addEventListener("load", function () { report("image", "loaded"); });
  img.addEventListener("error", function () { report("image", "failed"); });
  if (img.complete) {
    if (img.naturalWidth > 0) {
      report("image", "loaded");
    } else if (img.currentSrc || img.src) {
      // complete with no pixels: the fetch or the decode already failed
      report("image", "failed");
    }
  }

  var video = document.getElementById("video");
  video.addEventListener("loadeddata", function () { report("video", "loaded"); });
  video.addEventListener("error", function () { report("video", "failed"); });
  if (video.readyState >= 2) {
    report("video", "loaded");
  } else if (video.error) {
    report("video", "failed");
  }

  // With #seek-test in the URL, jump near the end once the video loaded, and
  // report when the seek completed: the node must answer the Range request.
  if (location.hash === "#seek-test") {
    var seek = document.getElementById("seek-status");
    seek.hidden = false;
    video.addEventListener("seeked", function () {
      seek.textContent = "seek: done at " + Math.round(video.currentTime) + "s";
    });
    var jump = function () { video.currentTime = Math.max(0, video.duration - 1); };
    if (video.readyState >= 1) {
      jump();
    } else {
      video.addEventListener("loadedmetadata", jump);
    }
  }

  var proto = document.getElementById("protocol");
  var nav = (performance.getEntriesByType && performance.getEntriesByType("navigation")[0]) || null;
  proto.textContent = nav && nav.nextHopProtocol ? nav.nextHopProtocol : "unknown";
})();
