// Drives Debian's chromium with playwright-core for tests/browser/*.py: reads
// one JSON command per line on stdin, answers one JSON line on stdout.
//   {"id":1,"op":"goto","arg":"http://127.0.0.1:PORT/page.html"}
//   {"id":2,"op":"eval","arg":"JS expression (a Promise is awaited)"}
//   {"id":4,"op":"offline","arg":true}: network emulation (the page sees offline/online)
//   {"id":3,"op":"newpage"} -> the new page's index; "page": N in goto/eval picks one (default 0)
// Stdin closed: the browser is closed and the driver exits. The page's console
// and errors go to stderr. No browser is downloaded: /usr/bin/chromium, or
// FANOUT_CHROMIUM.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.FANOUT_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", // root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // the machine's network is closed: no calls home, no component updates
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    // a headless page is "hidden": keep its timers at full speed
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
  ],
});
const pages = [];
async function newPage() {
  const page = await browser.newPage();
  const n = pages.length;
  page.on("console", (m) => process.stderr.write(`page ${n}: ` + m.text() + "\n"));
  page.on("pageerror", (e) => process.stderr.write(`page ${n} error: ` + e + "\n"));
  pages.push(page);
  return n;
}
await newPage();

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
out({ ready: true, version: browser.version() });

const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    out({ ok: false, error: "bad command line" });
    return;
  }
  try {
    let result = null;
    const page = pages[cmd.page || 0];
    if (!page) throw new Error("no page " + cmd.page);
    if (cmd.op === "goto") await page.goto(cmd.arg, { waitUntil: "load" });
    else if (cmd.op === "eval") result = await page.evaluate(cmd.arg);
    else if (cmd.op === "newpage") result = await newPage();
    else if (cmd.op === "offline") await page.context().setOffline(!!cmd.arg); // fires offline/online
    else throw new Error("unknown op " + cmd.op);
    out({ id: cmd.id, ok: true, result: result === undefined ? null : result });
  } catch (e) {
    out({ id: cmd.id, ok: false, error: String((e && e.stack) || e) });
  }
});
rl.on("close", async () => {
  await browser.close();
  process.exit(0);
});
