// The page's login in a real headless chromium (Debian's, through
// playwright-core): a user logs in, chats and logs out; a second user does
// not see the first one's conversation; a form posted from another site with
// the first user's browser is refused; a cookie kept after logout no longer
// works (the session ended on the server).
//
//   node login.mjs BASE_URL USER1 PASS1 USER2 PASS2 QUESTION EXPECT SCREENSHOT_DIR
// Prints a JSON report on stdout; exits 1 on any failed check.
import { chromium } from "playwright-core";
import path from "node:path";
import fs from "node:fs";

const [base, user1, pass1, user2, pass2, question, expect, shots] = process.argv.slice(2);
if (!shots) {
  console.error("usage: node login.mjs BASE_URL USER1 PASS1 USER2 PASS2 QUESTION EXPECT SCREENSHOT_DIR");
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
const report = {};
const pageErrors = [];
let page;

async function logIn(context, user, pass) {
  const p = await context.newPage();
  p.setDefaultTimeout(60_000);
  p.on("pageerror", (e) => pageErrors.push("page error: " + e.message));
  await p.goto(base + "/", { waitUntil: "load" });
  // Not logged in: the page shows the login form, not the app.
  await p.locator("#login").waitFor({ state: "visible" });
  check(await p.locator("#app").isHidden(), "the app is shown before login");
  await p.fill("#login-user", user);
  await p.fill("#login-password", pass);
  await p.click("#login-submit");
  await p.locator("#app").waitFor({ state: "visible" });
  await p.locator("#whoami", { hasText: user }).waitFor();
  return p;
}

try {
  // ------------------------------------------------------------ user 1
  const ctx1 = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // A page on another site, with a form that posts to the node.
  await ctx1.route("http://evil.test/**", (r) =>
    r.fulfill({
      contentType: "text/html",
      body: `<form id="f" method="POST" action="${base}/api/v1/documents">
               <input name="text" value="planted by another site"></form>
             <script>document.getElementById("f").submit()</script>`,
    }),
  );

  // A wrong password is refused with a message on the form.
  {
    const p = await ctx1.newPage();
    p.setDefaultTimeout(60_000);
    await p.goto(base + "/", { waitUntil: "load" });
    await p.locator("#login").waitFor({ state: "visible" });
    await p.fill("#login-user", user1);
    await p.fill("#login-password", pass1 + "-wrong");
    await p.click("#login-submit");
    await p.locator("#login-error").filter({ hasText: /./ }).waitFor();
    report.wrong_password = (await p.locator("#login-error").textContent()).trim();
    check(await p.locator("#app").isHidden(), "a wrong password opened the app");
    await p.close();
  }

  page = await logIn(ctx1, user1, pass1);
  const cookies = await ctx1.cookies(base);
  const session = cookies.find((c) => c.name === "ragfleet_session");
  check(session, "no session cookie after login: " + JSON.stringify(cookies.map((c) => c.name)));
  check(session.httpOnly, "the session cookie is not HttpOnly");
  check(session.sameSite === "Strict", "the session cookie is not SameSite=Strict: " + session.sameSite);
  check(!(await page.evaluate(() => document.cookie)).includes("ragfleet_session"), "page script can read the session cookie");
  report.cookie = { httpOnly: session.httpOnly, sameSite: session.sameSite };

  // Chat.
  await page.fill("#message", question);
  await page.press("#message", "Enter");
  const answer = page.locator(".msg.assistant").last();
  await answer.locator(".sources .cite").first().waitFor();
  const text = (await answer.locator(".body").textContent()) || "";
  report.answer = text;
  check(text.toLowerCase().includes(expect.toLowerCase()), `the answer ${JSON.stringify(text)} lacks ${JSON.stringify(expect)}`);
  const convId = await page.evaluate(() => localStorage.getItem("ragfleet.conversation"));
  check(convId, "no conversation id kept");
  report.conversation_id = convId;
  await page.reload({ waitUntil: "load" });
  await page.locator(`#conversations li[data-id="${convId}"]`).waitFor();
  await page.screenshot({ path: path.join(shots, "login-1-chat.png") });

  // A cross-site form post with this user's browser is refused and
  // stores nothing.
  const docsBefore = await (await page.request.get(base + "/api/v1/documents")).json();
  const evil = await ctx1.newPage();
  const posted = evil.waitForResponse((r) => r.url().startsWith(base + "/api/v1/documents"));
  await evil.goto("http://evil.test/", { waitUntil: "load" });
  const resp = await posted;
  report.cross_site_post = resp.status();
  check(resp.status() === 401 || resp.status() === 403, "the cross-site post answered " + resp.status());
  await evil.close();
  const docsAfter = await (await page.request.get(base + "/api/v1/documents")).json();
  check(docsAfter.total === docsBefore.total, `the cross-site post stored something: ${docsBefore.total} → ${docsAfter.total}`);

  // Log out: the login form is back, and the old cookie no longer works
  // anywhere (the session ended on the server, not only in this browser).
  await page.click("#logout");
  await page.locator("#login").waitFor({ state: "visible" });
  const after = await fetch(base + "/api/v1/conversations", {
    headers: { cookie: `ragfleet_session=${session.value}` },
  });
  report.old_cookie_after_logout = after.status;
  check(after.status === 401, "the cookie still works after logout: " + after.status);
  await page.screenshot({ path: path.join(shots, "login-2-logged-out.png") });

  // ------------------------------------------------------------ user 2
  const ctx2 = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page2 = await logIn(ctx2, user2, pass2);
  // Wait for the sidebar to have loaded (its request answered).
  const list = await (await page2.request.get(base + "/api/v1/conversations")).json();
  report.user2_conversations = list.items.map((c) => c.id);
  check(!list.items.some((c) => c.id === convId), "user 2 lists user 1's conversation");
  await page2.waitForTimeout(500);
  check((await page2.locator(`#conversations li[data-id="${convId}"]`).count()) === 0, "user 2's sidebar shows user 1's conversation");
  const direct = await page2.request.get(base + `/api/v1/conversations/${convId}`);
  report.user2_reads_user1 = direct.status();
  check(direct.status() === 404, "user 2 reading user 1's conversation got " + direct.status());
  await page2.screenshot({ path: path.join(shots, "login-3-second-user.png") });

  check(pageErrors.length === 0, "page errors: " + JSON.stringify(pageErrors));
  console.log(JSON.stringify(report));
} catch (e) {
  if (page) await page.screenshot({ path: path.join(shots, "login-failure.png") }).catch(() => {});
  console.error(e.stack || String(e));
  console.error("report so far: " + JSON.stringify(report));
  process.exitCode = 1;
} finally {
  await browser.close();
}
