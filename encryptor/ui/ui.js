// The encrypt page (docs/ui.md): one form that posts to this encryptor's POST /api/v1/encrypt.
// No framework, no other origin, nothing stored: the value, the token and the result live in
// this page's memory only, and the value field is cleared once encrypted.
"use strict";

(() => {
  // -- Kubernetes names: kamus/server/identity.py's rules and messages, word for word ----------
  const LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
  const DNS1123_LABEL = new RegExp(`^${LABEL}$`);
  const DNS1123_SUBDOMAIN = new RegExp(`^${LABEL}(\\.${LABEL})*$`);
  const NAMESPACE_MESSAGE =
    "must be a Kubernetes namespace name: at most 63 lowercase letters, digits and '-', " +
    "starting and ending with a letter or digit";
  const SERVICE_ACCOUNT_MESSAGE =
    "must be a Kubernetes service account name: at most 253 lowercase letters, digits, " +
    "'-' and '.', starting and ending with a letter or digit";
  // A Secret's or ConfigMap's key (Kubernetes's IsConfigMapKey).
  const KEY = /^[-._a-zA-Z0-9]+$/;

  const checkNamespace = (v) =>
    v.length > 63 || !DNS1123_LABEL.test(v) ? NAMESPACE_MESSAGE : null;
  const checkServiceAccount = (v) =>
    v.length > 253 || !DNS1123_SUBDOMAIN.test(v) ? SERVICE_ACCOUNT_MESSAGE : null;
  const checkObjectName = (v) =>
    v.length > 253 || !DNS1123_SUBDOMAIN.test(v)
      ? "must be a Kubernetes object name: at most 253 lowercase letters, digits, '-' and '.', " +
        "starting and ending with a letter or digit"
      : null;
  const checkKey = (v) => {
    if (v.length > 253 || !KEY.test(v)) {
      return "must be at most 253 letters, digits, '-', '_' and '.'";
    }
    if (v === "." || v === ".." || v.startsWith("..")) return "must not be '.' or start with '..'";
    return null;
  };

  // -- the page's elements -----------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const form = $("encrypt-form");
  const namespaceInput = $("namespace");
  const serviceAccountInput = $("service-account");
  const tokenField = $("token-field");
  const tokenInput = $("token");
  const tokenNote = $("token-note");
  const textPane = $("text-pane");
  const filePane = $("file-pane");
  const valueInput = $("value");
  const valueSize = $("value-size");
  const fileInput = $("file");
  const fileSize = $("file-size");
  const submit = $("submit");
  const submitLabel = $("submit-label");
  const statusBox = document.querySelector("[data-test=status]");
  const alertBox = document.querySelector("[data-test=error]");
  const alertTitle = document.querySelector("[data-test=error-title]");
  const alertMessage = document.querySelector("[data-test=error-message]");
  const alertRetry = document.querySelector("[data-test=retry-after]");
  const identityBadge = document.querySelector("[data-test=result-identity]");
  const emptyState = $("empty-state");
  const outputArea = $("output-area");
  const names = $("names");
  const objectName = $("object-name");
  const keyName = $("key-name");
  const codeBox = $("code-box");
  const outputCode = $("output-code");
  const outputNote = document.querySelector("[data-test=output-note]");
  const outputTitle = document.querySelector("[data-test=output-title]");
  const copyButton = $("copy");
  const copied = document.querySelector("[data-test=copied]");

  // -- state: in memory only -----------------------------------------------------------------
  let info = null; // ui/info.json
  let result = null; // {ciphertext, namespace, serviceAccount, file: bool}
  let shown = ""; // the text the copy button copies
  let keyEdited = false;
  let copiedTimer = 0;

  // A token crosses the network in clear text over plain http, unless the page came through a
  // loopback address (kubectl port-forward).
  const LOOPBACK = new Set(["127.0.0.1", "[::1]", "localhost"]);
  const tokenInClear = location.protocol === "http:" && !LOOPBACK.has(location.hostname);

  // -- small helpers -------------------------------------------------------------------------
  const utf8Length = (s) => new TextEncoder().encode(s).length;

  function size(bytes) {
    const exact = `${bytes.toLocaleString("en-US")} byte${bytes === 1 ? "" : "s"}`;
    if (bytes < 1024) return exact;
    const units = ["KiB", "MiB", "GiB"];
    let n = bytes / 1024;
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return `${exact} (${n.toFixed(1)} ${units[unit]})`;
  }

  function base64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function setFieldError(input, message) {
    const box = $(`${input.id}-error`);
    box.textContent = message || "";
    box.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function showStatus(text) {
    statusBox.textContent = text;
  }

  function showError(title, message, retrySeconds) {
    alertTitle.textContent = title;
    alertMessage.textContent = message;
    if (retrySeconds != null) {
      alertRetry.textContent =
        `Retry-After: wait ${retrySeconds} second${retrySeconds === 1 ? "" : "s"} ` +
        "before trying again.";
      alertRetry.dataset.seconds = String(retrySeconds);
      alertRetry.hidden = false;
    } else {
      alertRetry.textContent = "";
      delete alertRetry.dataset.seconds;
      alertRetry.hidden = true;
    }
    alertBox.hidden = false;
  }

  function clearError() {
    alertBox.hidden = true;
    alertTitle.textContent = "";
    alertMessage.textContent = "";
    alertRetry.textContent = "";
    alertRetry.hidden = true;
  }

  function source() {
    return form.elements.source.value === "file" ? "file" : "text";
  }

  function format() {
    const checked = document.querySelector("input[name=format]:checked");
    return checked ? checked.value : "raw";
  }

  // -- info.json: authentication, sealing keys, the default-SA refusal ------------------------
  const infoLoaded = fetch("ui/info.json", { cache: "no-store", credentials: "omit" })
    .then((response) => {
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return response.json();
    })
    .then((loaded) => {
      info = loaded;
      showInfo();
    })
    .catch((error) => {
      showError(
        "The page could not load its settings",
        `ui/info.json: ${error.message}. The encryptor still checks every request.`,
      );
    });

  function showInfo() {
    if (info.authentication === "kubernetes") {
      tokenField.hidden = false;
      if (tokenInClear) {
        tokenInput.disabled = true;
        tokenNote.textContent =
          `Disabled: this page came over plain http from ${location.hostname}, so a token ` +
          "would cross the network in clear text. Open the page over https, or through " +
          "kubectl port-forward on 127.0.0.1.";
        tokenNote.hidden = false;
      }
    }
    const sealing = info.sealing;
    $("keys-present").hidden = !sealing;
    $("keys-absent").hidden = Boolean(sealing);
    if (sealing) {
      document.querySelector("[data-test=sealing-key-id]").textContent = sealing.keyId;
      document.querySelector("[data-test=sealing-anchor]").textContent = sealing.anchor;
      document.querySelector("[data-test=sealing-cluster]").textContent =
        sealing.cluster || "(not named)";
      if (sealing.cluster) {
        const badge = document.querySelector("[data-test=cluster-badge]");
        badge.textContent = sealing.cluster;
        badge.title = "The cluster named in this encryptor's key bundle";
        badge.hidden = false;
      }
    }
  }

  // -- the value: text or a file -------------------------------------------------------------
  function showSource() {
    const file = source() === "file";
    textPane.hidden = file;
    filePane.hidden = !file;
    if (!file && !keyEdited) keyName.value = "value";
    if (file) showFileSize();
  }

  function showValueSize() {
    valueSize.textContent = size(utf8Length(valueInput.value));
  }

  function showFileSize() {
    const file = fileInput.files && fileInput.files[0];
    if (!file) {
      fileSize.textContent = "No file chosen";
      return;
    }
    const encoded = 4 * Math.ceil(file.size / 3);
    const limit = info && info.maxRequestBytes;
    const over = limit && encoded > limit ? `, over this encryptor's limit of ${size(limit)}` : "";
    fileSize.textContent =
      `${file.name}: ${size(file.size)}, sent as ${size(encoded)} of base64${over}`;
    if (!keyEdited && checkKey(file.name) === null) keyName.value = file.name;
  }

  // -- the request ---------------------------------------------------------------------------
  const TITLES = {
    400: "The encryptor refused the request",
    401: "Not authenticated",
    403: "Not allowed",
    413: "The value is too large",
    429: "Too many requests",
    503: "The encryptor is unavailable",
  };

  // The API's own message: v1 answers {"detail": "..."}; a proxy in front may answer anything.
  async function apiMessage(response) {
    const type = response.headers.get("content-type") || "";
    const text = await response.text();
    if (type.includes("json")) {
      try {
        const body = JSON.parse(text);
        for (const field of ["detail", "message", "title"]) {
          if (body && typeof body[field] === "string") return body[field];
        }
        if (body && body.detail !== undefined) return JSON.stringify(body.detail);
      } catch (_) {
        // not JSON after all: shown as text below
      }
    }
    if (type.startsWith("text/plain") && text.trim()) return text.trim().slice(0, 2000);
    return `${response.status} ${response.statusText}`.trim();
  }

  function retryAfter(response) {
    const header = response.headers.get("retry-after");
    if (!header) return null;
    if (/^\d+$/.test(header.trim())) return Number(header.trim());
    const when = Date.parse(header);
    return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
  }

  // The names as the API checks them, in its order: the message it would answer, or null.
  function checkNames(namespace, serviceAccount) {
    const nsProblem = checkNamespace(namespace);
    const saProblem = checkServiceAccount(serviceAccount);
    setFieldError(namespaceInput, nsProblem);
    setFieldError(serviceAccountInput, saProblem);
    const problems = [];
    if (saProblem) problems.push(`service-account: ${saProblem}`);
    if (nsProblem) problems.push(`namespace: ${nsProblem}`);
    if (problems.length) return problems.join("; ");
    if (serviceAccount === "default" && info) {
      setFieldError(serviceAccountInput, info.defaultServiceAccount);
      return `service-account: ${info.defaultServiceAccount}`;
    }
    return null;
  }

  async function readValue() {
    if (source() === "text") {
      return { data: valueInput.value, bytes: utf8Length(valueInput.value), file: false };
    }
    const file = fileInput.files && fileInput.files[0];
    if (!file) return null;
    const bytes = new Uint8Array(await file.arrayBuffer());
    return { data: base64(bytes), bytes: bytes.length, file: true };
  }

  function setBusy(busy) {
    submit.disabled = busy;
    form.setAttribute("aria-busy", String(busy));
    submitLabel.textContent = busy ? "Encrypting…" : "Encrypt";
  }

  async function encrypt(event) {
    event.preventDefault();
    if (submit.disabled) return;
    clearError();
    showStatus("");
    clearResult();
    await infoLoaded;
    const namespace = namespaceInput.value.trim();
    const serviceAccount = serviceAccountInput.value.trim();
    const refused = checkNames(namespace, serviceAccount);
    if (refused) {
      showError("Check the names", refused);
      (namespaceInput.hasAttribute("aria-invalid") ? namespaceInput : serviceAccountInput).focus();
      return;
    }
    // A file over the limit is refused by its size, before the browser reads it: a large one
    // would be held several times over (bytes, base64, JSON) only to be refused after.
    const limit = info && info.maxRequestBytes;
    const chosen = source() === "file" && fileInput.files && fileInput.files[0];
    if (chosen && limit && 4 * Math.ceil(chosen.size / 3) > limit) {
      showError(
        TITLES[413],
        `The file is ${size(chosen.size)}, ${size(4 * Math.ceil(chosen.size / 3))} of base64; ` +
          `this encryptor takes requests of at most ${size(limit)}. Nothing was sent.`,
      );
      fileInput.focus();
      return;
    }
    setBusy(true);
    try {
      let value;
      try {
        value = await readValue();
      } catch (error) {
        // Moved or changed since it was chosen (NotReadableError), or too large to encode.
        showError("The file could not be read", `${error.message || error}. Choose it again.`);
        fileInput.focus();
        return;
      }
      if (value === null) {
        showError("Nothing to encrypt", "Choose a file, or switch to Text.");
        fileInput.focus();
        return;
      }
      if (!value.file && value.data === "") {
        showError("Nothing to encrypt", "Type or paste the secret value.");
        valueInput.focus();
        return;
      }
      const headers = { "Content-Type": "application/json" };
      const token = tokenInput.value.trim();
      if (!tokenField.hidden && !tokenInput.disabled && token) {
        headers.Authorization = `Bearer ${token}`;
      }
      const body = JSON.stringify({
        data: value.data,
        "service-account": serviceAccount,
        namespace,
      });
      const length = utf8Length(body);
      if (limit && length > limit) {
        showError(
          TITLES[413],
          `The request would be ${size(length)}; this encryptor takes at most ${size(limit)}. ` +
            "Nothing was sent.",
        );
        (value.file ? fileInput : valueInput).focus();
        return;
      }
      let response;
      try {
        response = await fetch("api/v1/encrypt", {
          method: "POST",
          headers,
          body,
          cache: "no-store",
          credentials: "omit",
          redirect: "error",
        });
      } catch (error) {
        showError("The encryptor could not be reached", String(error.message || error));
        return;
      }
      if (!response.ok) {
        const title = `HTTP ${response.status} · ${TITLES[response.status] || "Error"}`;
        showError(title, await apiMessage(response), retryAfter(response));
        return;
      }
      // Only a ciphertext empties the value: a proxy in front (a login page) may answer 200 too.
      const type = response.headers.get("content-type") || "";
      let ciphertext;
      try {
        ciphertext = (await response.text()).trim();
      } catch (error) {
        showError("The answer could not be read", String(error.message || error));
        return;
      }
      if (!type.startsWith("text/plain") || !/^[\x21-\x7e]+$/.test(ciphertext)) {
        showError(
          "The answer is not a ciphertext",
          `HTTP ${response.status} (${type || "no content type"}): something in front of the ` +
            "encryptor may have answered. Your value is kept; nothing was encrypted.",
        );
        return;
      }
      result = { ciphertext, namespace, serviceAccount, file: value.file };
      // Done with the plaintext: the field is emptied, the file forgotten.
      valueInput.value = "";
      fileInput.value = "";
      showValueSize();
      showFileSize();
      showStatus(
        `Encrypted ${size(value.bytes)}${value.file ? " of a file" : ""} ` +
          `for ${serviceAccount} in ${namespace}.`,
      );
      showResult();
    } finally {
      setBusy(false);
    }
  }

  // -- the output ----------------------------------------------------------------------------
  // A YAML scalar: plain when any YAML parser reads it back as this string, else double-quoted
  // (a JSON string is a valid YAML double-quoted scalar).
  // Anything that starts like a number is quoted (0x1f, 1e3, 2001-12-14, 0o17, +1, .5).
  const SPECIAL = /^(?:[-+.]?[0-9].*|y|n|yes|no|on|off|true|false|null|~)$/i;
  function scalar(s) {
    return /^[A-Za-z0-9][-A-Za-z0-9._/$=+]*$/.test(s) && !SPECIAL.test(s) ? s : JSON.stringify(s);
  }

  function clearResult() {
    result = null;
    shown = "";
    outputArea.hidden = true;
    emptyState.hidden = false;
    identityBadge.hidden = true;
    copied.textContent = "";
  }

  function showResult() {
    emptyState.hidden = true;
    outputArea.hidden = false;
    identityBadge.textContent = `${result.namespace} / ${result.serviceAccount}`;
    identityBadge.title = "The namespace and service account that can decrypt it";
    identityBadge.hidden = false;
    render();
  }

  function render() {
    if (!result) return;
    const kind = format();
    names.hidden = kind === "raw" || (kind === "configmap" && result.file);
    copied.textContent = "";
    outputCode.textContent = "";
    const parts = [];
    const emit = (text, cls) => {
      parts.push(text);
      if (!cls) {
        outputCode.append(text);
        return;
      }
      const span = document.createElement("span");
      span.className = cls;
      if (cls === "y-cipher") span.dataset.test = "ciphertext";
      span.textContent = text;
      outputCode.append(span);
    };
    // Lines joined by newlines, with none at the end: what the copy button copies is what a
    // selection of the shown text holds.
    const line = (indent, key, value, cls = "y-str") => {
      if (parts.length) emit("\n");
      emit(" ".repeat(indent));
      emit(scalar(key), "y-key");
      emit(":");
      if (value !== undefined) {
        emit(" ");
        emit(scalar(value), cls);
      }
    };

    outputTitle.textContent = {
      raw: "ciphertext",
      kamussecret: `${objectName.value}.kamussecret.yaml`,
      configmap: `${objectName.value}.configmap.yaml`,
    }[kind];
    let note = "";
    let usable = true;
    if (kind !== "raw") {
      const nameProblem = checkObjectName(objectName.value);
      const keyProblem = checkKey(keyName.value);
      setFieldError(objectName, nameProblem);
      setFieldError(keyName, keyProblem);
      usable = !nameProblem && !keyProblem;
    }
    if (kind === "configmap" && result.file) {
      usable = false;
      note =
        "A file cannot go in a ConfigMap: the init container writes each value as text, and " +
        "this value is the file's base64. Use the KamusSecret output, whose data field the " +
        "controller decodes back to the file's bytes, or encrypt text instead.";
    }

    codeBox.hidden = !usable;
    copyButton.disabled = !usable;
    if (usable) {
      if (kind === "raw") {
        emit(result.ciphertext, "y-cipher");
        note = result.file
          ? "Decrypting this gives the file's base64 text."
          : `Only ${result.serviceAccount} in ${result.namespace} can decrypt it.`;
      } else if (kind === "kamussecret") {
        line(0, "apiVersion", "soluto.com/v1alpha2");
        line(0, "kind", "KamusSecret");
        line(0, "metadata");
        line(2, "name", objectName.value);
        line(2, "namespace", result.namespace);
        line(0, "type", "Opaque");
        line(0, "serviceAccount", result.serviceAccount);
        line(0, result.file ? "data" : "stringData");
        line(2, keyName.value, result.ciphertext, "y-cipher");
        note =
          `kubectl apply it: the controller makes the Secret ${objectName.value} ` +
          `with the key ${keyName.value}` +
          (result.file ? ", holding the file's bytes." : ".");
      } else {
        line(0, "apiVersion", "v1");
        line(0, "kind", "ConfigMap");
        line(0, "metadata");
        line(2, "name", objectName.value);
        line(2, "namespace", result.namespace);
        line(2, "annotations");
        line(4, "kamus.soluto.com/service-account", result.serviceAccount);
        line(0, "data");
        line(2, keyName.value, result.ciphertext, "y-cipher");
        note =
          "Mount it in the pod: Kamus's init container decrypts each key into a file, " +
          `as the service account ${result.serviceAccount}.`;
      }
    }
    shown = usable ? parts.join("") : "";
    outputNote.textContent = note;
    outputNote.classList.toggle("warn", kind === "configmap" && result.file);
  }

  async function copy() {
    if (!shown) return;
    let done = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(shown);
        done = true;
      } catch (_) {
        done = false;
      }
    }
    if (!done) {
      // Plain http from another host is no secure context: no navigator.clipboard.
      const selection = window.getSelection();
      const range = document.createRange();
      range.selectNodeContents(outputCode);
      selection.removeAllRanges();
      selection.addRange(range);
      try {
        done = document.execCommand("copy");
      } catch (_) {
        done = false;
      }
    }
    copied.textContent = done ? "Copied" : "Not copied: select the text and copy it";
    clearTimeout(copiedTimer);
    copiedTimer = setTimeout(() => {
      copied.textContent = "";
    }, 4000);
  }

  // -- wiring --------------------------------------------------------------------------------
  form.addEventListener("submit", encrypt);
  for (const radio of form.querySelectorAll("input[name=source]")) {
    radio.addEventListener("change", showSource);
  }
  for (const radio of document.querySelectorAll("input[name=format]")) {
    radio.addEventListener("change", render);
  }
  valueInput.addEventListener("input", showValueSize);
  valueInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  fileInput.addEventListener("change", showFileSize);
  for (const input of [namespaceInput, serviceAccountInput]) {
    input.addEventListener("input", () => setFieldError(input, null));
  }
  objectName.addEventListener("input", render);
  keyName.addEventListener("input", () => {
    keyEdited = true;
    render();
  });
  copyButton.addEventListener("click", copy);
  showSource();
  showValueSize();
  showFileSize();
})();
