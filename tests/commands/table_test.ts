/** The one table renderer of `check` and `status`: widths, notes, no trailing blanks. */
import assert from "node:assert/strict";
import { renderTable } from "../../src/commands/common.ts";

Deno.test("renderTable pads columns to the widest cell and puts notes below their row", () => {
  const text = renderTable(["ACCOUNT", "TOKEN", "SMTP"], [
    { cells: ["a@example.com", "ok", ""] },
    { cells: ["b@x", "failed", "skipped"], notes: ["error: invalid_grant", "hint:  run it"] },
  ]);
  assert.equal(
    text,
    [
      "ACCOUNT        TOKEN   SMTP",
      "a@example.com  ok",
      "b@x            failed  skipped",
      "    error: invalid_grant",
      "    hint:  run it",
    ].join("\n"),
  );
  assert.equal(renderTable(["A", "B"], []), "A  B");
});
