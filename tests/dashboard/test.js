// The dashboard in Debian's Chromium (run by run.sh, which starts a real
// server, seeds it with `phb-ledger demo` and starts `phb-ledger dashboard`
// as the demo's commissioner with --allow-review). What the API answers is
// read with the CLI (`balance`, `statement`, `plan`, `holdings`, `flags`,
// `report quarterly`), each a signed gRPC call; the page must show the same.
"use strict";
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set (run tests/dashboard/run.sh)`);
  return v;
};
const BIN = env("PHB_BIN");
const SERVER = env("PHB_SERVER");
const KEYS = env("PHB_KEYS");
const LOGIN = env("PHB_LOGIN");
const SHOTS = env("PHB_SHOTS");
const BASE = LOGIN.replace(/\/login\?token=.*$/, "");
const demo = JSON.parse(fs.readFileSync(path.join(KEYS, "demo.json"), "utf8"));
const ICB = demo.organisations.commissioner;
const THIRD = demo.organisations.third_party;
const [DP, TP] = demo.budgets;
const KEY = path.join(KEYS, `${ICB}.key`);

/** The CLI as the commissioner: stdout's JSON lines. */
function cli(...args) {
  const out = execFileSync(BIN, [...args], { encoding: "utf8", env: { ...process.env, PHB_LEDGER_SERVER: SERVER } });
  return out;
}
function cliJson(...args) {
  return cli(...args).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}
const as = ["--signer", ICB, "--key", KEY];

/** Exact pence of a money string, as a BigInt (never a float). */
function pence(s) {
  const m = /^(-?)(\d+)\.(\d{2})$/.exec(s.trim());
  assert.ok(m, `not a money string: ${JSON.stringify(s)}`);
  const v = BigInt(m[2]) * 100n + BigInt(m[3]);
  return m[1] ? -v : v;
}
function pounds(p) {
  const neg = p < 0n;
  const a = neg ? -p : p;
  return `${neg ? "-" : ""}${a / 100n}.${String(a % 100n).padStart(2, "0")}`;
}

const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}\n     ${String(e && e.stack || e).split("\n").slice(0, 6).join("\n     ")}`);
  }
}

let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  const file = path.join(SHOTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

/** axe-core, WCAG 2.x A and AA: no serious or critical violation. */
async function accessible(page, name) {
  // page.evaluate runs through the DevTools protocol, which the page's CSP
  // does not govern; the page itself stays under its strict policy.
  await page.evaluate(axeSource);
  const r = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"] } })
  );
  const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  const minor = r.violations.filter((v) => !bad.includes(v));
  if (minor.length) console.log(`     axe (${name}): minor: ${minor.map((v) => `${v.id} (${v.impact})`).join(", ")}`);
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join("; ")}`),
    [],
    `${name}: serious or critical accessibility violations`
  );
}

/** The text of every cell of table `id`, keyed by column id (from the CSV download header order). */
async function tableRows(page, id) {
  return page.$$eval(`table#${id} tbody tr`, (trs) =>
    trs.map((tr) => ({ id: tr.id, cells: [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()) }))
  );
}

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    // Playwright gives every launch a fresh temporary profile (its own
    // --user-data-dir); the rest keep a closed-network root machine quiet.
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const cspViolations = [];
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to (load|execute|apply)/i.test(m.text())) cspViolations.push(m.text());
  });

  await check("without the token: every page is refused (401), and a wrong token too", async () => {
    for (const p of ["/", "/flags", "/budgets", `/budget/${DP}`, "/holdings", "/return", "/events", "/return?format=csv&table=return"]) {
      const r = await context.request.get(BASE + p, { maxRedirects: 0 });
      assert.equal(r.status(), 401, `${p} without a session`);
      assert.ok(!(await r.text()).includes(DP), `${p} leaks nothing`);
    }
    const wrong = await page.goto(`${BASE}/login?token=${"0".repeat(64)}`);
    assert.equal(wrong.status(), 401);
    await screenshot(page, "refused-without-token");
    const post = await context.request.post(`${BASE}/flags/review`, { form: { step: "preview" }, maxRedirects: 0 });
    assert.equal(post.status(), 401, "a POST without a session");
  });

  await check("the printed URL's token gives an HttpOnly, SameSite=Strict session cookie", async () => {
    const r = await page.goto(LOGIN);
    assert.equal(r.status(), 200);
    assert.equal(new URL(page.url()).pathname, "/");
    const cookies = await context.cookies();
    assert.equal(cookies.length, 1);
    assert.equal(cookies[0].httpOnly, true);
    assert.equal(cookies[0].sameSite, "Strict");
    const csp = r.headers()["content-security-policy"];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.ok(!/unsafe-inline|unsafe-eval|https?:/.test(csp), `strict CSP: ${csp}`);
    assert.equal(r.headers()["x-frame-options"], "DENY");
  });

  const balances = cliJson("balance", ...as);
  await check("overview: totals and budgets by management equal the API's balances", async () => {
    await page.goto(`${BASE}/`);
    await screenshot(page, "overview");
    assert.equal(await page.textContent("h1"), "Overview");
    const fig = async (k) => (await page.textContent(`dd[data-figure="${k}"]`)).trim();
    assert.equal(await fig("budgets"), String(balances.length));
    for (const [k, f] of [["allocated", "allocated"], ["paid_in", "paid_in"], ["spent", "spent"], ["held", "held"]]) {
      const sum = balances.reduce((a, b) => a + pence(b[f]), 0n);
      assert.equal(await fig(k), pounds(sum), `overview ${k}`);
    }
    const rows = await tableRows(page, "by_management");
    for (const m of ["DIRECT_PAYMENT", "THIRD_PARTY", "NOTIONAL"]) {
      const bs = balances.filter((b) => b.management === `MANAGEMENT_${m}`);
      const row = rows.find((r) => r.cells[0] === m);
      assert.ok(row, `a row for ${m}`);
      assert.equal(row.cells[1], String(bs.length));
      assert.equal(row.cells[4], pounds(bs.reduce((a, b) => a + pence(b.spent), 0n)), `${m} spent`);
    }
    assert.ok(await page.$("svg#spend-chart rect"), "the spend chart has bars");
    await accessible(page, "overview");
  });

  await check("overview: open flags by code, cohort and age band equal ListFlags and GetQuarterlyReturn; the months add up", async () => {
    await page.goto(`${BASE}/`);
    const open = cliJson("flags", ...as, "--status", "OPEN");
    const byCode = {};
    for (const f of open) byCode[f.code] = (byCode[f.code] || 0) + 1;
    const rows = await tableRows(page, "open_flags");
    assert.deepEqual(Object.fromEntries(rows.map((r) => [r.cells[0], Number(r.cells[1])])), byCode);
    assert.equal((await page.textContent('dd[data-figure="open_flags"]')).trim(), String(open.length));
    const quarter = /\d{4}Q\d/.exec(await (await context.request.get(`${BASE}/return`)).text())[0];
    const csv = cli("report", "quarterly", "--server", SERVER, ...as, "--commissioner", ICB, "--quarter", quarter, "--csv")
      .trim().split("\n").slice(1).map((l) => l.split(","));
    for (const [dim, table] of [["cohort", "by_cohort"], ["age_band", "by_age_band"]]) {
      const want = csv.filter((r) => r[0] === dim).map((r) => r.slice(1).join(","));
      const got = (await tableRows(page, table)).map((r) => r.cells.join(","));
      assert.deepEqual(got, want, `${dim} rows`);
    }
    const months = await tableRows(page, "spend_by_month");
    const total = months.reduce((a, r) => a + pence(r.cells[2]), 0n);
    assert.equal(pounds(total), (await page.textContent('dd[data-figure="spent_this_year"]')).trim(), "the months add up to the year");
  });

  await check("overview: spent this year, surplus and spend by category equal GetSpendingSummary", async () => {
    await page.goto(`${BASE}/`);
    const heading = await page.textContent("h2:has-text('financial year to date')");
    const [, from, to] = /\((\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2})\)/.exec(heading);
    const s = JSON.parse(cli("report", "spending", "--server", SERVER, ...as, "--commissioner", ICB, "--from", from, "--to", to, "--json"));
    const fig = async (k) => (await page.textContent(`dd[data-figure="${k}"]`)).trim();
    assert.equal(await fig("spent_this_year"), s.total_spent);
    assert.equal(await fig("budgets_in_surplus"), String(s.surplus_budgets));
    assert.equal(await fig("surplus_held"), s.surplus_held);
    assert.equal(await fig("as_of_sequence"), String(s.head_sequence));
    const byKey = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
    const got = (await tableRows(page, "by_category")).map((r) => r.cells).sort(byKey);
    const want = s.by_category.map((l) => [l.key, l.amount, l.share, String(l.budgets)]).sort(byKey);
    assert.deepEqual(got, want, "spend by category, year to date");
  });

  await check("budgets: every figure equals GetBalance/ListBalances and links to the statement", async () => {
    await page.goto(`${BASE}/budgets`);
    await screenshot(page, "budgets");
    const rows = await tableRows(page, "budgets");
    assert.equal(rows.length, balances.length);
    for (const b of balances) {
      const row = rows.find((r) => r.cells[0] === b.budget_id);
      assert.ok(row, b.budget_id);
      assert.deepEqual(row.cells.slice(4, 9), [b.allocated, b.paid_in, b.spent, b.held, b.available], b.budget_id);
    }
    const href = await page.getAttribute(`table#budgets a[href="/budget/${DP}#statement"]`, "href");
    assert.ok(href, "figures link to the statement");
    await accessible(page, "budgets");
  });

  await check("budgets: sorting by a column (server-side) and the CSV download agree with the API", async () => {
    await page.click('table#budgets th a:has-text("Held")');
    await page.waitForURL(/sort=budgets\.held/);
    const held = (await tableRows(page, "budgets")).map((r) => pence(r.cells[7]));
    const sorted = [...held].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    assert.deepEqual(held, sorted, "descending by held, as numbers");
    const csv = await (await context.request.get(`${BASE}/budgets?format=csv&table=budgets`)).text();
    const lines = csv.trim().split(/\r?\n/);
    assert.equal(lines[0], "budget_id,holder_ref,commissioner_id,management,allocated,paid_in,spent,held,available,stopped");
    for (const b of balances) {
      assert.ok(lines.some((l) => l.startsWith(`${b.budget_id},${b.holder_ref},`) && l.includes(`,${b.allocated},${b.paid_in},${b.spent},${b.held},${b.available},`)), `CSV row of ${b.budget_id}`);
    }
  });

  for (const b of [DP, TP]) {
    await check(`budget ${b}: balance, care plan and every statement row equal the API`, async () => {
      const r = await page.goto(`${BASE}/budget/${b}`);
      assert.equal(r.status(), 200);
      await screenshot(page, `budget-${b === DP ? "direct-payment" : "third-party"}`);
      const bal = balances.find((x) => x.budget_id === b);
      for (const k of ["allocated", "paid_in", "spent", "held", "available"]) {
        assert.equal((await page.textContent(`dd[data-figure="${k}"]`)).trim(), bal[k], `${b} ${k}`);
      }
      const statement = cliJson("statement", ...as, b);
      const rows = await tableRows(page, "statement");
      assert.equal(rows.length, statement.length, "one row per statement entry");
      for (const s of statement) {
        const row = rows.find((x) => x.id === `seq-${s.sequence}`);
        assert.ok(row, `row seq-${s.sequence}`);
        assert.deepEqual([row.cells[3], row.cells[4], row.cells[5], row.cells[9]], [s.kind, s.signer_id, s.amount, s.held], `seq ${s.sequence}`);
      }
      const plan = JSON.parse(cli("plan", ...as, b));
      const lines = await tableRows(page, "plan");
      for (const l of plan.lines) {
        const row = lines.find((x) => x.cells[0] === l.line_id);
        assert.ok(row, `plan line ${l.line_id}`);
        assert.deepEqual(row.cells.slice(3, 6), [l.annual_amount, l.spent, l.remaining]);
      }
      await accessible(page, `budget ${b}`);
    });
  }

  await check("holdings: the third party's rows equal GetHoldings and reconcile to the penny", async () => {
    const [total, ...rowsApi] = cliJson("holdings", ...as, THIRD);
    await page.goto(`${BASE}/holdings?org=${THIRD}`);
    await screenshot(page, "holdings");
    assert.equal(await page.getAttribute("#reconciliation", "data-reconciles"), "true");
    for (const [k, f] of [["total_paid_in", "total_paid_in"], ["total_spent", "total_spent"], ["total_held", "total_held"]]) {
      assert.equal((await page.textContent(`dd[data-figure="${k}"]`)).trim(), total[f], k);
    }
    const rows = await tableRows(page, "holdings");
    assert.equal(rows.length, rowsApi.length);
    for (const h of rowsApi) {
      const row = rows.find((x) => x.cells[0] === h.budget_id);
      assert.ok(row, h.budget_id);
      assert.deepEqual(row.cells.slice(4, 7), [h.paid_in, h.spent, h.held]);
    }
    await accessible(page, "holdings");
  });

  await check("quarterly return: the figures, their sequence and the CSV equal GetQuarterlyReturn", async () => {
    await page.goto(`${BASE}/return`);
    await screenshot(page, "quarterly-return");
    const title = await page.textContent("h1");
    const quarter = /Quarterly return (\d{4}Q\d)/.exec(title)[1];
    const table = cli("report", "quarterly", "--server", SERVER, ...as, "--commissioner", ICB, "--quarter", quarter);
    const asOf = /As of sequence (\d+)/.exec(table)[1];
    assert.equal((await page.textContent('[data-figure="as_of_sequence"]')).trim(), asOf);
    const want = cli("report", "quarterly", "--server", SERVER, ...as, "--commissioner", ICB, "--quarter", quarter, "--csv").trim().split(/\r?\n/);
    const got = (await (await context.request.get(`${BASE}/return?format=csv&table=return`)).text()).trim().split(/\r?\n/);
    assert.deepEqual(got, want, "the CSV download is the CLI's CSV");
    const rows = await tableRows(page, "return");
    assert.deepEqual(rows.map((r) => r.cells.join(",")), want.slice(1), "the table shows every row");
    await accessible(page, "quarterly return");
  });

  const flagsBefore = cliJson("flags", ...as, "--status", "OPEN");
  const target = flagsBefore.find((f) => f.code === "EXTERNAL_MATCH");
  await check("flags: the open queue equals ListFlags, with evidence linked to statement rows", async () => {
    assert.ok(target, "the demo raised an EXTERNAL_MATCH flag");
    await page.goto(`${BASE}/flags`);
    await screenshot(page, "flags");
    const rows = await tableRows(page, "flags");
    assert.deepEqual(rows.map((r) => r.cells[0]).sort(), flagsBefore.map((f) => f.flag_id).sort());
    for (const f of flagsBefore) {
      const row = rows.find((r) => r.cells[0] === f.flag_id);
      assert.equal(row.cells[4], f.explanation);
      assert.equal(row.cells[5], f.sequences.map((s) => `#${s}`).join(" "));
    }
    assert.equal((await page.textContent("#live-open-flags")).trim(), String(flagsBefore.length));
    const ev = await page.getAttribute(`tr[id="flag-${target.flag_id}"] td:nth-child(6) a`, "href");
    assert.equal(ev, `/budget/${target.budget_id}#seq-${target.sequences[0]}`);
    await accessible(page, "flags");
  });

  let reviewSeq = 0;
  await check("a flag dismissed through the page: FlagReviewed signed by the organisation is in the log", async () => {
    await page.goto(`${BASE}/flags`);
    await page.click(`tr[id="flag-${target.flag_id}"] a:has-text("Review")`);
    await page.check("#outcome-dismissed");
    await page.fill("#note", "payroll hours do not overlap with the care given");
    await accessible(page, "review form");
    await screenshot(page, "review-form");
    await page.click('button:has-text("Continue")');
    assert.equal(await page.textContent("h1"), "Confirm the review");
    // Nothing is signed before the explicit confirmation.
    assert.equal(cliJson("statement", ...as, target.budget_id).filter((s) => s.kind === "flag_reviewed").length, 0);
    await screenshot(page, "review-confirm");
    await page.click('button:has-text("Sign and record")');
    reviewSeq = Number((await page.textContent("#review-sequence")).trim());
    assert.ok(reviewSeq > 0, "the page shows the sequence written");
    await screenshot(page, "review-recorded");
    await accessible(page, "review recorded");
    const rows = cliJson("statement", ...as, target.budget_id).filter((s) => s.sequence === reviewSeq);
    assert.equal(rows.length, 1, "the statement has the entry");
    assert.equal(rows[0].kind, "flag_reviewed");
    assert.equal(rows[0].signer_id, ICB, "signed by the organisation");
    assert.equal(rows[0].refused, false);
    const f = cliJson("flags", ...as, "--budget", target.budget_id).find((x) => x.flag_id === target.flag_id);
    assert.equal(f.status, "DISMISSED");
    assert.equal(f.reviewed_by, ICB);
    assert.equal(f.review_sequence, reviewSeq);
    // The statement row the page links to is there.
    await page.click("text=See it on the budget's statement");
    assert.ok(await page.$(`tr#seq-${reviewSeq}`));
  });

  await check("cross-site and cross-origin POSTs and a wrong CSRF token are refused; nothing is signed", async () => {
    const count = () => cliJson("statement", ...as, target.budget_id).filter((s) => s.kind === "flag_reviewed").length;
    const before = count();
    const form = (action) => `<!doctype html><html lang="en"><head><title>x</title></head><body><form id="f" method="post" action="${action}">
      <input name="step" value="sign"><input name="flag_id" value="${target.flag_id}"><input name="budget_id" value="${target.budget_id}">
      <input name="outcome" value="CONFIRMED"><input name="note" value="forged"><input name="event_id" value="dashboard-review-forged">
      <input name="csrf" value="guess"></form><script>document.getElementById("f").submit()</script></body></html>`;
    const evil = http.createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(form(`${BASE}/flags/review`));
    });
    await new Promise((r) => evil.listen(0, "127.0.0.1", r));
    const port = evil.address().port;
    try {
      // Another site (localhost is not 127.0.0.1's site): the Strict cookie is not sent.
      const cross = page.waitForResponse((r) => r.url() === `${BASE}/flags/review`);
      await page.goto(`http://localhost:${port}/`);
      const r1 = await cross;
      assert.ok([401, 403].includes(r1.status()), `cross-site POST answered ${r1.status()}`);
      await screenshot(page, "cross-site-post-refused");
      // Same site, another origin (another port): cookie sent, Origin wrong.
      const sameSite = page.waitForResponse((r) => r.url() === `${BASE}/flags/review`);
      await page.goto(`http://127.0.0.1:${port}/`);
      const r2 = await sameSite;
      assert.equal(r2.status(), 403, "cross-origin POST");
    } finally {
      evil.close();
    }
    // Our own origin with the session cookie but a wrong CSRF token.
    const r3 = await context.request.post(`${BASE}/flags/review`, {
      form: { step: "sign", flag_id: target.flag_id, budget_id: target.budget_id, outcome: "CONFIRMED", note: "x", event_id: "dashboard-review-x", csrf: "wrong" },
    });
    assert.equal(r3.status(), 403);
    assert.equal(count(), before, "no FlagReviewed was signed");
  });

  await check("live: a new flag raised meanwhile updates the open count without a reload (server-sent events)", async () => {
    await page.goto(`${BASE}/flags`);
    const before = Number((await page.textContent("#live-open-flags")).trim());
    // Let the page's EventSource connect and report the first counts.
    await page.waitForFunction(() => document.querySelector("#live-head").textContent.trim() !== "", null, { timeout: 10000 });
    await page.waitForTimeout(500);
    const ev = JSON.stringify({
      event_id: `live-match-${Date.now()}`, budget_id: DP,
      external_match_recorded: { source: "NFI-2026", kind: "OTHER", reference: "m-live" },
    });
    cli("submit", ...as, ev);
    await page.waitForFunction((n) => Number(document.querySelector("#live-open-flags").textContent) === n, before + 1, { timeout: 15000 });
    assert.equal(await page.isVisible("#live-notice"), true, "the page says new flags arrived");
    await screenshot(page, "live-new-flag");
  });

  await check("with JavaScript off every page still works: figures, sorting by link", async () => {
    const noJs = await browser.newContext({ javaScriptEnabled: false });
    const p = await noJs.newPage();
    await p.goto(LOGIN);
    await p.goto(`${BASE}/budgets`);
    await p.click('table#budgets th a:has-text("Spent")');
    const spent = (await tableRows(p, "budgets")).map((r) => pence(r.cells[6]));
    assert.deepEqual(spent, [...spent].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0)));
    assert.equal((await p.textContent("#live-open-flags")).trim(), String(cliJson("flags", ...as, "--status", "OPEN").length));
    await noJs.close();
  });

  await check("no page broke its own Content-Security-Policy", async () => {
    assert.deepEqual(cspViolations, []);
  });

  await browser.close();
  const failed = results.filter((r) => !r.ok);
  console.log(`\n${results.length - failed.length} passed, ${failed.length} failed; screenshots in ${SHOTS}`);
  process.exit(failed.length ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
