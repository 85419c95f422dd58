// clients/js/fanout.js in Node.js with the npm ws package, driven by
// test_node_client.py: argv = delivery address, then the tokens the token
// function hands out in turn (the last one repeats). Prints one JSON line per
// client event on stdout; "close" on stdin closes the client and exits.
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { FanoutClient } from "../../clients/js/fanout.js";

const [addr, ...tokens] = process.argv.slice(2);
let k = 0;
const c = new FanoutClient(`ws://${addr}/ws`, {
  WebSocket,
  token: async () => tokens[Math.min(k++, tokens.length - 1)],
  rooms: ["r1"],
  heartbeatTimeout: 1000,
});
const out = (...a) => process.stdout.write(JSON.stringify(a) + "\n");
c.on("state", (s, d) => out("state", s, d ? d.code : null));
c.on("welcome", (w) => out("welcome", w.ping_ms || 0, w.recovered === true));
c.on("joined", (e) => out("joined", e.room));
c.on("recovered", (e) => out("recovered", e.stream, e.recovered));
c.on("message", (m) => out("message", m.user !== undefined ? "user" : "room:" + m.room, m.data));
c.on("error", (e) => out("error", e.code));
c.connect();
createInterface({ input: process.stdin }).on("line", (l) => {
  if (l.trim() === "close") {
    c.close();
    out("stats", c.stats);
    process.exit(0);
  }
});
