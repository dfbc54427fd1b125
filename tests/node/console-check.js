// Loads the Tributary web console in Debian's headless Chromium (driven by playwright-core)
// while a stream is being ingested, and checks that the charts render and update.
// Usage: node console-check.js URL SCREENSHOT.png VIEW
// Prints one JSON line with what it saw; exits non-zero when a check fails.
"use strict";

const { chromium } = require("playwright-core");

async function main() {
  const [url, screenshot, view] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
    page.on("pageerror", (err) => errors.push(`page error: ${err.message}`));
    page.on("console", (msg) => { if (msg.type() === "error") errors.push(`console: ${msg.text()}`); });
    page.on("requestfailed", (req) => errors.push(`request failed: ${req.url()}`));
    await page.goto(url, { waitUntil: "load" });
    // The view is listed, and the throughput chart has several points above zero.
    await page.waitForSelector(`#views tr[data-view="${view}"]`, { timeout: 30000 });
    await page.waitForFunction(() => {
      const c = document.getElementById("chart-throughput");
      return Number(c.dataset.points) >= 3 && Number(c.dataset.max) > 0;
    }, null, { timeout: 30000 });
    const read = () => page.evaluate(() => {
      const charts = {};
      for (const id of ["chart-throughput", "chart-freshness", "chart-lag"]) {
        const c = document.getElementById(id);
        const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let inked = 0;
        for (let i = 0; i < pixels.length; i += 4) {
          if (pixels[i] < 200 || pixels[i + 1] < 200 || pixels[i + 2] < 200) inked += 1;
        }
        charts[id] = { points: Number(c.dataset.points), max: Number(c.dataset.max), updates: Number(c.dataset.updates), inked, image: c.toDataURL() };
      }
      const row = document.querySelector("#views tbody tr[data-view]");
      return { charts, row: row ? row.innerText : "", status: document.getElementById("status").textContent };
    });
    const first = await read();
    await page.waitForTimeout(3000);
    const second = await read();
    await page.screenshot({ path: screenshot, fullPage: true });
    const failures = [...errors];
    for (const id of Object.keys(second.charts)) {
      const a = first.charts[id], b = second.charts[id];
      if (!(b.points > 0)) failures.push(`${id}: no points`);
      if (!(b.inked > 200)) failures.push(`${id}: nothing drawn (${b.inked} inked pixels)`);
      if (!(b.updates > a.updates)) failures.push(`${id}: not updated (${a.updates} -> ${b.updates})`);
      if (b.points <= a.points && b.points < 2 * 120) failures.push(`${id}: no new points (${a.points} -> ${b.points})`);
      if (b.image === a.image) failures.push(`${id}: the drawing did not change`);
    }
    const summary = {
      failures,
      status: second.status,
      row: second.row,
      charts: Object.fromEntries(Object.entries(second.charts).map(([k, v]) => [k, { points: v.points, max: v.max, updates: v.updates, inked: v.inked }])),
    };
    console.log(JSON.stringify(summary));
    process.exitCode = failures.length ? 1 : 0;
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
