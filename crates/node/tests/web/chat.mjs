// Drives the node's web chat page in a real headless chromium (Debian's,
// through playwright-core; no browser download): upload a file, ask a
// question, watch the answer stream in, open a citation and its source,
// reload and find the conversation again. Fails (exit 1) on any console
// error or page error. Screenshots go to the directory given.
//
//   node chat.mjs BASE_URL FILE QUESTION EXPECT SCREENSHOT_DIR
// Prints a JSON report on stdout.
import { chromium } from "playwright-core";
import path from "node:path";
import fs from "node:fs";

const [base, file, question, expect, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node chat.mjs BASE_URL FILE QUESTION EXPECT SCREENSHOT_DIR");
  process.exit(2);
}
fs.mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const consoleErrors = [];
const report = {};
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push("page error: " + e.message));
  page.setDefaultTimeout(60_000);

  await page.goto(base + "/", { waitUntil: "load" });
  await page.locator("#node-status.ok").waitFor();

  // Upload: the file appears in the uploads list as indexed, then in the documents.
  const name = path.basename(file);
  await page.setInputFiles("#file-input", file);
  const upload = page.locator("#uploads li", { hasText: name });
  await upload.locator(".state.good").waitFor();
  report.upload = (await upload.locator(".state").textContent()).trim();
  await page.locator("#documents li").first().waitFor();
  report.documents = await page.locator("#documents li .title").allTextContents();
  await page.screenshot({ path: path.join(shots, "1-uploaded.png") });

  // Record every change of the answer's text while it streams.
  await page.evaluate(() => {
    window.__snapshots = [];
    const box = document.getElementById("messages");
    new MutationObserver(() => {
      const b = box.querySelector(".msg.assistant:last-child .body");
      if (b) {
        window.__snapshots.push({ len: b.textContent.length, streaming: b.classList.contains("streaming") });
      }
    }).observe(box, { subtree: true, childList: true, characterData: true });
  });
  await page.fill("#message", question);
  await page.press("#message", "Enter");
  const answer = page.locator(".msg.assistant").last();
  await answer.locator(".sources .cite").first().waitFor();
  await page.screenshot({ path: path.join(shots, "2-answered.png") });
  const snaps = await page.evaluate(() => window.__snapshots);
  const streamedLens = [...new Set(snaps.filter((s) => s.streaming && s.len > 0).map((s) => s.len))];
  report.streamed_steps = streamedLens.length;
  check(streamedLens.length >= 2, `the answer did not stream in (text lengths while streaming: ${JSON.stringify(streamedLens)})`);
  const text = (await answer.locator(".body").textContent()) || "";
  report.answer = text;
  check(!(await answer.evaluate((e) => e.classList.contains("error"))), "the answer failed: " + text);
  check(text.toLowerCase().includes(expect.toLowerCase()), `the answer ${JSON.stringify(text)} lacks ${JSON.stringify(expect)}`);
  check((await answer.locator(".body .cite").count()) >= 1, "no inline [n] citation in the answer");
  const sourceTitle = (await answer.locator(".sources li").first().textContent()) || "";
  report.source = sourceTitle.trim();

  // Clicking the citation opens the passage and its link to the source document.
  await answer.locator(".body .cite").first().click();
  await page.locator("#passage").waitFor({ state: "visible" });
  report.passage_title = await page.locator("#passage-title").textContent();
  report.passage = await page.locator("#passage-text").textContent();
  check(report.passage.toLowerCase().includes(expect.toLowerCase()), "the passage does not hold the cited text: " + report.passage);
  const href = await page.locator("#passage-source").getAttribute("href");
  report.source_href = href;
  check(href && href.startsWith("/api/v1/documents/"), "no link to the source document: " + href);
  const doc = await page.request.get(base + href);
  check(doc.ok(), `the source link ${href} answered ${doc.status()}`);
  report.source_document = await doc.json();
  await page.screenshot({ path: path.join(shots, "3-passage.png") });

  // Reload: the conversation is listed and shown again with its citations.
  const convId = await page.evaluate(() => localStorage.getItem("ragfleet.conversation"));
  check(convId, "no conversation id kept");
  report.conversation_id = convId;
  await page.reload({ waitUntil: "load" });
  await page.locator(`#conversations li.active[data-id="${convId}"]`).waitFor();
  const again = page.locator(".msg.assistant").last();
  await again.locator(".sources .cite").first().waitFor();
  check((await page.locator(".msg.user .body").last().textContent()) === question, "the question is not shown after reload");
  check(((await again.locator(".body").textContent()) || "").toLowerCase().includes(expect.toLowerCase()), "the answer is not shown after reload");
  await page.screenshot({ path: path.join(shots, "4-reloaded.png") });

  check(consoleErrors.length === 0, "console errors: " + JSON.stringify(consoleErrors));
  report.console_errors = consoleErrors;
  console.log(JSON.stringify(report));
} catch (e) {
  if (page) await page.screenshot({ path: path.join(shots, "failure.png") }).catch(() => {});
  console.error(e.stack || String(e));
  console.error("report so far: " + JSON.stringify(report));
  console.error("console errors: " + JSON.stringify(consoleErrors));
  process.exitCode = 1;
} finally {
  await browser.close();
}
