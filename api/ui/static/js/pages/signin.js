// Sign-in: an API token (from `pgd token create` or `pgd up`), checked against GET /me.

import { signIn } from "../api.js";
import { h, problemBox } from "../dom.js";
import { notice } from "../app.js";

export function render(main) {
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true, placeholder: "pgd_…" });
  const error = h("div", { class: "field-error", id: "signin-error" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "card signin", novalidate: true },
    h("h1", {}, "Sign in to pgd"),
    h("p", { class: "muted" }, "Paste an API token. It is kept in this browser tab only and sent to the API as a header."),
    h("label", { for: "token" }, "API token"),
    input,
    error,
    button,
    h("p", { class: "muted small" }, "No token? An admin creates one with ", h("code", {}, "pgd token create --owner <you>"), "; ", h("code", {}, "pgd up"), " prints one."));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.replaceChildren();
    const secret = input.value.trim();
    if (!secret) { error.textContent = "Enter a token."; return; }
    button.disabled = true;
    try {
      await signIn(secret);
      notice(null);
      const next = sessionStorage.getItem("pgd.after-signin") || "#/jobs";
      sessionStorage.removeItem("pgd.after-signin");
      location.hash = next.startsWith("#/signin") ? "#/jobs" : next;
    } catch (err) {
      error.append(err.status === 401 ? h("span", {}, "This token is not valid: ", err.message, ".") : problemBox(err, "Cannot sign in"));
    } finally {
      button.disabled = false;
    }
  });
  main.append(form);
  input.focus();
}
