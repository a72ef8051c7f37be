// The Node.js socket.io 4.8 peer of the fan-out benchmark (bench/fanout.py --servers
// socketio-node), built the way a Node team would: socket.io's own server, rooms and
// broadcast, nothing tuned beyond the options every server in the benchmark gets.
//
// - WebSocket connections at /socket.io/ on --port (Engine.IO v4, WebSocket transport
//   only, no per-message compression, no HTTP long-polling). A client connects with
//   its HS256 token as the auth payload ({"token": "<jwt>"}); a middleware verifies it
//   with jsonwebtoken (algorithm pinned to HS256, exp required) and refuses the connect
//   (a connect_error) otherwise; the connection then joins one room per channel of the
//   token's "channels" claim (one room per document).
// - POST /api/publish {"channel", "data"} and POST /api/batch {"commands": [{"publish":
//   {...}}, ...]} with X-API-Key, on --api-port (and on --port too, as the other servers
//   do): each publication is io.to(channel).emit("pub", {channel, data, offset}), socket.io's
//   own fan-out. Replies follow our server's API: {"result": {}} and
//   {"result": {"replies": [{"publish": {}}, ...]}}.
// - Keepalive: socket.io cannot turn its pings off; they are every 10 minutes here, so
//   that none happens during a measurement (the other servers' pings are off);
//   --ping-interval S sets it (the tests check that the generator answers them), and
//   the time allowed for the answer is the same, at most 60 s.
//
// The secret and the API key come from the environment (BENCH_JWT_SECRET,
// BENCH_API_KEY), never from the command line.
//
// Run: BENCH_JWT_SECRET=... BENCH_API_KEY=... node bench/peers/socketio/server.mjs \
//        --port 9000 --api-port 9001 [--ping-interval 600]

import http from "node:http";
import process from "node:process";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const HOST = "127.0.0.1";
const MAX_BODY = 1 << 20;
const BAD_REQUEST = { error: { code: 107, message: "bad request" } };

function fail(message) {
  process.stderr.write(`socketio-node: ${message}\n`);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    "api-port": { type: "string" },
    "ping-interval": { type: "string", default: "600" },
  },
});
const port = Number(args.port);
const apiPort = Number(args["api-port"]);
const pingInterval = Math.round(Number(args["ping-interval"]) * 1000);
if (!Number.isInteger(port) || !Number.isInteger(apiPort) || !(pingInterval > 0)) {
  fail("usage: server.mjs --port N --api-port N [--ping-interval SECONDS]");
}
const secret = process.env.BENCH_JWT_SECRET;
const apiKey = process.env.BENCH_API_KEY;
if (!secret || !apiKey) {
  fail("BENCH_JWT_SECRET and BENCH_API_KEY must be set");
}

// --- the socket.io server -------------------------------------------------------------

const wsServer = http.createServer();
const io = new Server(wsServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 65536, // the same frame size limit as the others
  pingInterval,
  pingTimeout: Math.min(pingInterval, 60_000),
  connectTimeout: 30_000,
});

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  let claims;
  try {
    claims = jwt.verify(String(token), secret, { algorithms: ["HS256"] });
  } catch {
    next(new Error("invalid token"));
    return;
  }
  if (typeof claims !== "object" || typeof claims.exp !== "number") {
    next(new Error("invalid token"));
    return;
  }
  socket.data.channels = Array.isArray(claims.channels) ? claims.channels.map(String) : [];
  next();
});

io.on("connection", (socket) => {
  for (const channel of socket.data.channels) {
    socket.join(channel);
  }
});

// --- the publish trigger --------------------------------------------------------------

let offset = 0;

function publish(body) {
  if (body === null || typeof body !== "object" || typeof body.channel !== "string") {
    return false;
  }
  offset += 1;
  io.to(body.channel).emit("pub", { channel: body.channel, data: body.data, offset });
  return true;
}

function batch(body) {
  const commands = body?.commands;
  if (!Array.isArray(commands) || commands.length === 0 || commands.length > 100) {
    return null;
  }
  return commands.map((command) =>
    command !== null && typeof command === "object" && publish(command.publish)
      ? { publish: {} }
      : BAD_REQUEST,
  );
}

function answer(res, status, reply) {
  const body = reply === undefined ? "" : JSON.stringify(reply);
  res.writeHead(status, { "Content-Type": "application/json" }).end(body);
}

function api(req, res) {
  if (req.method !== "POST" || (req.url !== "/api/publish" && req.url !== "/api/batch")) {
    answer(res, 404);
    return;
  }
  if (req.headers["x-api-key"] !== apiKey) {
    answer(res, 401);
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      answer(res, 413);
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      answer(res, 200, BAD_REQUEST);
      return;
    }
    if (req.url === "/api/batch") {
      const replies = batch(body);
      answer(res, 200, replies === null ? BAD_REQUEST : { result: { replies } });
    } else {
      answer(res, 200, publish(body) ? { result: {} } : BAD_REQUEST);
    }
  });
}

// socket.io answers its own path on the WebSocket port; everything else there is the API.
wsServer.on("request", (req, res) => {
  if (!req.url.startsWith("/socket.io/")) {
    api(req, res);
  }
});
const apiServer = http.createServer(api);

wsServer.listen({ host: HOST, port, backlog: 4096 });
apiServer.listen({ host: HOST, port: apiPort, backlog: 4096 });

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
