// Drives examples/dashboard/index.html in headless Chromium (puppeteer-core) for
// e2e/tests/it/quickstart.rs, which runs the README's dashboard as written: fills the sign-in
// form as a person would, says `ready` once the page follows its channel over both transports
// and has seen its refused stream close, waits for the messages the test then publishes,
// keeps a screenshot, and prints what the page saw.
//
// Usage: node run.mjs PAGE_URL API_URL SCREENSHOT_PATH
// Environment: CHROMIUM (the browser binary), EXPECT_MESSAGES (per transport, default 2).
import puppeteer from "puppeteer-core";

const [pageUrl, apiUrl, screenshot] = process.argv.slice(2);
const expected = Number(process.env.EXPECT_MESSAGES || 2);
const deadline = (ms) => ({ timeout: ms, polling: 100 });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a CI container has no user namespaces for Chromium's sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failure = null;
const page = await browser.newPage();
const console_lines = [];
page.on("console", (m) => console_lines.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => console_lines.push(`pageerror: ${e.message}`));
try {
  await page.setViewport({ width: 1100, height: 900 });
  await page.goto(pageUrl, { waitUntil: "load" });
  // The API lives on another origin than the page: sign-in and the streams cross it.
  await page.$eval("#api", (el, v) => { el.value = v; }, apiUrl);
  await page.click("#go");
  await page.waitForFunction(
    () => {
      const d = window.dashboard;
      return d.errors.length > 0 || (d.signedIn && d.mqttConnected && d.streamOpen && d.refused);
    },
    deadline(30000),
  );
  const early = await page.evaluate(() => window.dashboard.errors);
  if (early.length > 0) throw new Error("the page failed: " + early.join("; "));
  console.log("ready");
  await page.waitForFunction(
    (n) => window.dashboard.mqtt.length >= n && window.dashboard.stream.length >= n,
    deadline(30000),
    expected,
  );
} catch (e) {
  failure = e.message;
} finally {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  const seen = await page.evaluate(() => window.dashboard).catch(() => null);
  console.log("result " + JSON.stringify({ failure, seen, console: console_lines }));
  await browser.close();
}
process.exit(failure === null ? 0 : 1);
