'use strict';
// The Node.js runner: serves the easyfaas runtime protocol (docs/runtime-protocol.md) inside a sandbox.
// Plain Node.js (16 or later), no npm packages. Started as `node easyfaas_runner.cjs SOCKET`.
//
// Handlers are Lambda-shaped: `exports.handler = async (event, context) => ...` or the callback style
// `(event, context, callback)`, in CommonJS (.js, .cjs) or ES modules (.mjs, or .js under
// "type": "module"). Calls may overlap (instance_concurrency > 1): output is attributed to its call
// through AsyncLocalStorage, not through a process-wide buffer.

const fs = require('fs');
const net = require('net');
const path = require('path');
const { AsyncLocalStorage } = require('async_hooks');
const { performance } = require('perf_hooks');
const { pathToFileURL } = require('url');

const Kind = { LOAD: 1, LOADED: 2, LOAD_ERROR: 3, INVOKE: 4, RESULT: 5, ERROR: 6, PING: 7, PONG: 8, SHUTDOWN: 9 };
const KNOWN_KINDS = new Set(Object.values(Kind));
const HEADER_SIZE = 13;
const MAX_FRAME = 64 * 1024 * 1024;
const LOAD_LOG_CAP = 1024 * 1024; // LOAD carries no log_cap: the reference runner's fixed cap
const EMPTY = Buffer.alloc(0);
const MODULE_EXTENSIONS = ['.js', '.mjs', '.cjs'];

// Kept before user code can replace them: the runner's own diagnostics go to the driver's stderr file.
const realStderrWrite = process.stderr.write.bind(process.stderr);

class FrameError extends Error {}

// -- framing -------------------------------------------------------------------------------------

function encode(kind, requestId, meta, body) {
  const metaBuf = meta && Object.keys(meta).length ? Buffer.from(JSON.stringify(meta), 'utf8') : EMPTY;
  const bodyBuf = body || EMPTY;
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  header.writeUInt32BE(requestId >>> 0, 0);
  header.writeUInt32BE(metaBuf.length, 4);
  header.writeUInt32BE(bodyBuf.length, 8);
  header.writeUInt8(kind, 12);
  return [header, metaBuf, bodyBuf];
}

function send(conn, kind, requestId, meta, body) {
  if (conn.destroyed) return;
  conn.cork();
  for (const part of encode(kind, requestId, meta, body)) if (part.length) conn.write(part);
  conn.uncork();
}

// Accumulates socket chunks and cuts whole frames out of them; large bodies are copied once.
class FrameReader {
  constructor() {
    this.chunks = [];
    this.buffered = 0;
    this.header = null;
  }

  take(n) {
    if (n === 0) return EMPTY;
    const first = this.chunks[0];
    if (first.length >= n) {
      this.chunks[0] = first.subarray(n);
      if (this.chunks[0].length === 0) this.chunks.shift();
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const chunk = this.chunks[0];
      const k = Math.min(chunk.length, n - got);
      chunk.copy(out, got, 0, k);
      got += k;
      if (k === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(k);
    }
    this.buffered -= n;
    return out;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames = [];
    for (;;) {
      if (this.header === null) {
        if (this.buffered < HEADER_SIZE) break;
        const h = this.take(HEADER_SIZE);
        const header = {
          requestId: h.readUInt32BE(0), metaLen: h.readUInt32BE(4), bodyLen: h.readUInt32BE(8), kind: h.readUInt8(12),
        };
        if (header.metaLen + header.bodyLen > MAX_FRAME) {
          throw new FrameError(`frame of ${header.metaLen + header.bodyLen} bytes exceeds the ${MAX_FRAME}-byte limit`);
        }
        this.header = header;
      }
      const { requestId, metaLen, bodyLen, kind } = this.header;
      if (this.buffered < metaLen + bodyLen) break;
      const metaBuf = this.take(metaLen);
      const body = this.take(bodyLen);
      this.header = null;
      frames.push({ kind, requestId, meta: decodeMeta(metaBuf), body });
    }
    return frames;
  }
}

function decodeMeta(buf) {
  if (buf.length === 0) return {};
  let meta;
  try {
    meta = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new FrameError(`frame meta is not JSON: ${err.message}`);
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) throw new FrameError('frame meta is not a JSON object');
  return meta;
}

// -- per-call output -----------------------------------------------------------------------------

// Keeps the first `cap` characters a call prints and counts the rest.
class CallLog {
  constructor(cap) {
    this.cap = cap;
    this.parts = [];
    this.kept = 0;
    this.dropped = 0;
    this.open = true;
  }

  write(text) {
    const room = this.cap - this.kept;
    if (room <= 0) {
      this.dropped += text.length;
      return;
    }
    const part = text.length > room ? text.slice(0, room) : text;
    this.parts.push(part);
    this.kept += part.length;
    this.dropped += text.length - part.length;
  }

  text() {
    return this.parts.join('');
  }
}

const calls = new AsyncLocalStorage();
// Output with no open call (a timer firing after its call replied) is shown with the next call.
let orphan = new CallLog(LOAD_LOG_CAP);

function capture(chunk) {
  let text;
  if (typeof chunk === 'string') text = chunk;
  else if (chunk instanceof Uint8Array) text = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
  else text = String(chunk);
  const log = calls.getStore();
  (log && log.open ? log : orphan).write(text);
}

// console.* write through these stream methods, so replacing them captures console output too.
for (const stream of [process.stdout, process.stderr]) {
  stream.write = function write(chunk, encoding, callback) {
    capture(chunk);
    const cb = typeof encoding === 'function' ? encoding : callback;
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  };
}

function newCallLog(cap) {
  const log = new CallLog(cap);
  if (orphan.kept || orphan.dropped) {
    log.write(orphan.text());
    log.dropped += orphan.dropped;
    orphan = new CallLog(LOAD_LOG_CAP);
  }
  return log;
}

// -- errors ----------------------------------------------------------------------------------------

function errorMeta(err, typeOverride) {
  if (err instanceof Error || (err !== null && typeof err === 'object' && 'message' in err)) {
    const ctor = err.constructor && err.constructor.name;
    // `class MyError extends Error {}` keeps name "Error": its class name says more.
    const type = typeOverride || (err.name && err.name !== 'Error' ? String(err.name) : ctor || 'Error');
    let frames = typeof err.stack === 'string'
      ? err.stack.split('\n').filter((line) => /^\s+at /.test(line)).map((line) => line.trim())
      : [];
    // Below the user's frames come the runner's own (and the promise machinery): not theirs to read.
    const ours = frames.findIndex((line) => line.includes(__filename));
    if (ours > 0) frames = frames.slice(0, ours);
    // V8 lists the innermost frame first; the protocol wants it last, as Python tracebacks do.
    return { type, message: String(err.message), stack: frames.reverse() };
  }
  return { type: typeOverride || 'Error', message: String(err), stack: [] };
}

function namedError(name, message) {
  const err = new Error(message);
  err.name = name;
  return err;
}

// -- the function ----------------------------------------------------------------------------------

const state = { handler: null, loading: false, function: {}, inflight: new Set() };

// "dir/file.a.b" -> module "dir/file", property path ["a", "b"], as Lambda splits node handlers.
function parseHandler(handler) {
  const dir = path.posix.dirname(handler);
  const base = path.posix.basename(handler);
  const dot = base.indexOf('.');
  if (dot <= 0 || dot === base.length - 1) {
    throw namedError('Runtime.MalformedHandlerName', `handler ${JSON.stringify(handler)} must look like 'file.function'`);
  }
  return { module: dir === '.' ? base.slice(0, dot) : `${dir}/${base.slice(0, dot)}`, props: base.slice(dot + 1).split('.') };
}

function findModuleFile(codeDir, modulePath) {
  const base = path.resolve(codeDir, modulePath);
  for (const ext of MODULE_EXTENSIONS) {
    if (fs.existsSync(base + ext)) return base + ext;
  }
  const tried = MODULE_EXTENSIONS.map((ext) => modulePath + ext).join(', ');
  throw namedError('Runtime.ImportModuleError', `cannot find module '${modulePath}' (tried ${tried})`);
}

async function importModule(file) {
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (err) {
    // A .js file under "type": "module" is an ES module: require() refuses it, import() takes it.
    if (err && err.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw err;
  }
}

function lookup(root, props) {
  let value = root;
  for (const prop of props) value = value === null || value === undefined ? undefined : value[prop];
  return value;
}

async function load(meta) {
  if (state.handler !== null || state.loading) {
    return [Kind.LOAD_ERROR, { type: 'ReloadRefused', message: 'this instance already loaded a function', stack: [], logs: '' }];
  }
  state.loading = true;
  const log = new CallLog(LOAD_LOG_CAP);
  return calls.run(log, async () => {
    const started = performance.now();
    try {
      Object.assign(process.env, meta.env || {});
      process.chdir(meta.code_dir);
      const spec = parseHandler(String(meta.handler));
      const mod = await importModule(findModuleFile(meta.code_dir, spec.module));
      let fn = lookup(mod, spec.props);
      // import() of CommonJS puts module.exports under `default`.
      if (fn === undefined && mod && mod.default) fn = lookup(mod.default, spec.props);
      if (typeof fn !== 'function') {
        throw namedError('HandlerNotFound', `${spec.module} has no function ${spec.props.join('.')} (got ${typeof fn})`);
      }
      state.handler = fn;
      state.function = meta;
    } catch (err) {
      log.open = false;
      state.loading = false;
      return [Kind.LOAD_ERROR, { ...errorMeta(err), logs: log.text() }];
    }
    log.open = false;
    return [Kind.LOADED, { init_ms: performance.now() - started, logs: log.text() }];
  });
}

function makeContext(fn, requestId, deadline) {
  const name = String(fn.function || '');
  return {
    awsRequestId: requestId,
    requestId,
    functionName: name,
    functionVersion: String(fn.version || '$LATEST'),
    // A string, as Lambda's Node.js runtime gives it.
    memoryLimitInMB: String(fn.memory_mb || 128),
    invokedFunctionArn: String(fn.arn || ''),
    logGroupName: `/easyfaas/${name}`,
    logStreamName: String(fn.instance || ''),
    identity: undefined,
    clientContext: undefined,
    // Accepted for compatibility; a reply never waits for the event loop to drain.
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(deadline - Date.now())),
  };
}

function callHandler(event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (err, result) => {
      if (settled) return;
      settled = true;
      state.inflight.delete(fail);
      if (err !== null && err !== undefined) reject(err);
      else resolve(result);
    };
    const fail = (err) => settle(err === null || err === undefined ? new Error(String(err)) : err);
    state.inflight.add(fail);
    context.done = settle;
    context.succeed = (result) => settle(null, result);
    context.fail = fail;
    const handler = state.handler;
    const callbackStyle = handler.length >= 3;
    let returned;
    try {
      returned = callbackStyle ? handler(event, context, settle) : handler(event, context);
    } catch (err) {
      fail(err);
      return;
    }
    if (returned && typeof returned.then === 'function') returned.then((value) => settle(null, value), fail);
    else if (!callbackStyle) settle(null, returned);
  });
}

function isBytes(value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer;
}

async function invoke(meta, body) {
  if (state.handler === null) {
    return [Kind.ERROR, { type: 'NotLoaded', message: 'no function is loaded', stack: [] }, EMPTY];
  }
  const cap = Number.isInteger(meta.log_cap) ? meta.log_cap : LOAD_LOG_CAP;
  const log = newCallLog(cap);
  const context = makeContext(state.function, String(meta.rid || ''), Number(meta.deadline) || 0);
  return calls.run(log, async () => {
    const started = performance.now();
    const withLogs = (reply) => {
      log.open = false;
      if (log.kept) reply.logs = log.text();
      if (log.dropped) reply.truncated = log.dropped;
      return reply;
    };
    let result;
    try {
      const event = body.length ? JSON.parse(body.toString('utf8')) : null;
      result = await callHandler(event, context);
    } catch (err) {
      return [Kind.ERROR, withLogs(errorMeta(err)), EMPTY];
    }
    const reply = { ms: performance.now() - started };
    if (isBytes(result)) {
      reply.raw = true;
      return [Kind.RESULT, withLogs(reply), Buffer.from(result instanceof ArrayBuffer ? result : result.buffer, result.byteOffset || 0, result.byteLength)];
    }
    let text;
    try {
      text = JSON.stringify(result);
    } catch (err) {
      return [Kind.ERROR, withLogs(errorMeta(err, 'Runtime.MarshalError')), EMPTY];
    }
    return [Kind.RESULT, withLogs(reply), Buffer.from(text === undefined ? 'null' : text, 'utf8')];
  });
}

// An error no call awaited (a throw in a timer, a forgotten rejection) fails the calls in flight
// rather than the process: the instance keeps serving, as with an exception in the handler.
function unhandled(err, type) {
  if (state.inflight.size === 0) {
    const meta = errorMeta(err, type);
    orphan.write(`${meta.type}: ${meta.message}\n`);
    return;
  }
  let reported = err;
  if (type) {
    // As Lambda reports them: the rejection's own type and message go into the message.
    const inner = errorMeta(err);
    reported = { name: type, message: `${inner.type}: ${inner.message}`, stack: err instanceof Error ? err.stack : undefined };
  }
  for (const fail of [...state.inflight]) fail(reported);
}
process.on('uncaughtException', (err) => unhandled(err));
process.on('unhandledRejection', (reason) => unhandled(reason, 'Runtime.UnhandledPromiseRejection'));

// -- serving ---------------------------------------------------------------------------------------

function handleFrame(conn, frame) {
  const { kind, requestId, meta, body } = frame;
  if (kind === Kind.INVOKE) {
    invoke(meta, body).then(([outKind, outMeta, outBody]) => send(conn, outKind, requestId, outMeta, outBody));
  } else if (kind === Kind.LOAD) {
    load(meta).then(([outKind, outMeta]) => send(conn, outKind, requestId, outMeta));
  } else if (kind === Kind.PING) {
    send(conn, Kind.PONG, requestId);
  } else if (kind === Kind.SHUTDOWN) {
    process.exit(0);
  }
}

function serveConnection(conn) {
  const reader = new FrameReader();
  conn.on('data', (chunk) => {
    let frames;
    try {
      frames = reader.push(chunk);
    } catch (err) {
      conn.destroy(); // a malformed frame: drop this connection, keep listening
      return;
    }
    for (const frame of frames) {
      if (!KNOWN_KINDS.has(frame.kind) || frame.kind === Kind.LOADED || frame.kind === Kind.LOAD_ERROR
          || frame.kind === Kind.RESULT || frame.kind === Kind.ERROR || frame.kind === Kind.PONG) {
        conn.destroy();
        return;
      }
      handleFrame(conn, frame);
    }
  });
  // The driver's readiness probe and the funclet's LOAD connection end this way: nothing to do.
  conn.on('error', () => {});
}

function main(argv) {
  if (argv.length !== 1) {
    realStderrWrite('usage: easyfaas_runner.cjs SOCKET\n');
    process.exit(2);
  }
  const socketPath = argv[0];
  try {
    fs.unlinkSync(socketPath);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const server = net.createServer({ allowHalfOpen: false }, serveConnection);
  server.on('error', (err) => {
    realStderrWrite(`easyfaas node runner: cannot listen on ${socketPath}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen({ path: socketPath, backlog: 16 });
}

main(process.argv.slice(2));
