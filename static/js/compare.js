// Keyboard shortcuts for the compare page. Every key clicks a button that is also on the page,
// so the mouse, the keys and a browser without JavaScript all submit the same forms.
//   1 A better · 2 B better · 3 tie · 4 both bad · e edit the correct answer · z undo · ? keys
// Keys are ignored while typing; in the editor, Esc leaves it and Ctrl/Cmd+Enter saves.
(function () {
  "use strict";

  let busy = false; // one judgment in flight at a time: a double press must not judge twice

  function pair() {
    return document.getElementById("pair");
  }

  function buttonFor(key) {
    const root = pair();
    return root ? root.querySelector('[data-key="' + key + '"]') : null;
  }

  function texts() {
    const node = document.getElementById("pair-texts");
    return node ? JSON.parse(node.textContent) : { left: "", right: "" };
  }

  function openEditor() {
    const editor = document.getElementById("editor");
    if (!editor) return;
    editor.open = true;
    const area = editor.querySelector("textarea");
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function closeEditor(area) {
    area.blur();
    const editor = document.getElementById("editor");
    if (editor) editor.open = false;
  }

  function toggleHelp() {
    const help = document.getElementById("keys-help");
    if (help) help.open = !help.open;
  }

  // "Start from A/B" in the editor: copy that side's text. It says nothing about which side
  // was better; the annotator answers that separately.
  document.addEventListener("click", function (event) {
    const source = event.target.closest("[data-start-from]");
    if (!source) return;
    event.preventDefault();
    const side = source.dataset.startFrom;
    const form = source.closest("form");
    form.querySelector("textarea").value = texts()[side];
    form.querySelector("textarea").focus();
  });

  // "Add the words selected in your answer": the selection becomes a phrase that matters.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-add-phrase]");
    if (!button) return;
    event.preventDefault();
    const form = button.closest("form");
    const answer = form.querySelector("#edited");
    const phrases = form.querySelector("#key-phrases");
    const picked = answer.value.slice(answer.selectionStart, answer.selectionEnd).trim();
    if (!picked) return;
    const lines = phrases.value.split("\n").map(function (line) { return line.trim(); });
    const kept = lines.filter(function (line) { return line; });
    if (kept.indexOf(picked) === -1) kept.push(picked);
    phrases.value = kept.join("\n");
  });

  // Opening the editor by mouse also puts the cursor in it (after the click has toggled it).
  // An editor that arrives open (after undoing a corrected answer) leaves the keys alone.
  document.addEventListener("click", function (event) {
    if (!event.target.closest("#editor > summary")) return;
    setTimeout(function () {
      const editor = document.getElementById("editor");
      if (editor && editor.open) editor.querySelector("textarea").focus();
    }, 0);
  });

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    const typing = target.closest && target.closest("textarea, input, select, [contenteditable]");
    if (typing) {
      if (event.key === "Escape") {
        event.preventDefault();
        closeEditor(target);
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        if (!busy) target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const key = event.key.toLowerCase();
    if (key === "?") {
      event.preventDefault();
      toggleHelp();
    } else if (key === "e") {
      event.preventDefault();
      openEditor();
    } else if (["1", "2", "3", "4", "z"].includes(key)) {
      const button = buttonFor(key);
      if (!button || button.disabled || busy) return;
      event.preventDefault();
      button.click();
    }
  });

  // Busy from the request until htmx has wired up the new pair (after settling, which the
  // forms ask for at once with settle:0ms): a key pressed in between would click a button
  // htmx has not taken over yet and post the form without htmx.
  document.addEventListener("htmx:beforeRequest", function () {
    busy = true;
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (!event.detail.successful) busy = false;
  });
  // A session that expired answers with the login page: go there instead of nesting it here.
  document.addEventListener("htmx:beforeSwap", function (event) {
    const url = event.detail.xhr.responseURL || "";
    if (url.indexOf("/accounts/login/") !== -1) {
      event.detail.shouldSwap = false;
      window.location.assign(url);
    }
  });
  // A failed request swaps nothing; say so on the pair instead of failing silently.
  function showError(text) {
    const root = pair();
    if (!root) return;
    const notice = document.createElement("p");
    notice.className = "notice error";
    notice.setAttribute("role", "alert");
    notice.textContent = text;
    root.prepend(notice);
  }
  document.addEventListener("htmx:responseError", function (event) {
    const status = event.detail.xhr.status;
    showError("Not saved (the server answered " + status + "). Reload the page and try again.");
  });
  document.addEventListener("htmx:sendError", function () {
    showError("Not saved: the server could not be reached. Try again.");
  });
  document.addEventListener("htmx:afterSettle", function () {
    busy = false;
    // Keys go to the new pair, not to a button that has left the page.
    if (document.activeElement && !document.body.contains(document.activeElement)) {
      document.body.focus();
    }
  });
})();
