// fcsup's Node.js runtime agent: runs FC 3.0 Node.js handlers over FC's runtime API.
//
// It loops on `GET http://$FC_RUNTIME_API/2020-11-11/runtime/invocation/next`, runs what the
// call's `x-fc-function-type` names (0 the handler, 1 the Initializer, 2 PreStop, 3 PreFreeze)
// and posts the result to `.../invocation/{id}/response` or `.../{id}/error`; a handler that
// cannot be loaded is posted to `.../runtime/init/error` and the agent exits with status 129.
//
// Environment (FC's names where FC has one):
//   FC_RUNTIME_API          host:port of the runtime API (default 127.0.0.1:19001)
//   FC_FUNC_CODE_PATH       the code directory, also the working directory (default /code)
//   FC_FUNCTION_HANDLER     the handler, `index.handler` = exports.handler of index.js
//   FC_INITIALIZER_HANDLER  the Initializer, e.g. `index.initialize` (optional)
//   FC_PRE_STOP_HANDLER     the PreStop hook, e.g. `index.preStop` (optional; fcsup's name)
//   FC_PRE_FREEZE_HANDLER   the PreFreeze hook (optional; fcsup's name, FC 2.0 only)
// A hook name missing from the environment is taken from the call's headers.
//
// Handlers: `async (event, context)` or `(event, context, callback)`; hooks `async (context)`
// or `(context, callback)`. `event` is a Buffer. Standard library only; docs/runtime-api.md.
'use strict';

const http = require('http');
const path = require('path');
const fs = require('fs');
const util = require('util');
const Module = require('module');
const { pathToFileURL } = require('url');

const API_VERSION = '2020-11-11';
const KINDS = { 0: 'Invoke', 1: 'Initialize', 2: 'PreStop', 3: 'PreFreeze' };
const HOOK_ENV = { 1: 'FC_INITIALIZER_HANDLER', 2: 'FC_PRE_STOP_HANDLER', 3: 'FC_PRE_FREEZE_HANDLER' };
const HOOK_HEADER = {
  1: 'x-fc-function-initializer',
  2: 'x-fc-instance-lifecycle-pre-stop-handler',
  3: 'x-fc-instance-lifecycle-pre-freeze-handler',
};

// Freeze hazards (README): timers the function set and that have not fired, listed with each
// answer in `x-fcsup-pending` (FC freezes the instance right after it). Only the function's
// timers: the agent keeps the originals for its own.
const realSetTimeout = global.setTimeout;
const timers = new Set();
for (const [kind, real] of [['setTimeout', global.setTimeout], ['setInterval', global.setInterval], ['setImmediate', global.setImmediate]]) {
  const wrapped = {
    [kind](cb, ...rest) {
      const t = real(cb, ...rest);
      const ms = kind === 'setImmediate' ? 0 : Number(rest[0]) || 0;
      timers.add({ t, kind, name: (cb && cb.name) || 'anonymous', ms });
      return t;
    },
  }[kind];
  if (real[util.promisify.custom]) wrapped[util.promisify.custom] = real[util.promisify.custom];
  global[kind] = wrapped;
}

// The function's timers still pending, by name (at most 32).
function pendingTimers() {
  const out = [];
  for (const e of timers) {
    // `_destroyed`: fired (setTimeout) or cleared; an Immediate's `_onImmediate` is cleared.
    const done = e.kind === 'setImmediate' ? !e.t._onImmediate : e.t._destroyed;
    if (done) timers.delete(e);
    else if (out.length < 32) out.push(`Node.js ${e.kind} ${e.name}${e.kind === 'setImmediate' ? '' : ` (${e.ms} ms)`}`);
  }
  return out;
}

// `x-fcsup-pending` when something is pending: a JSON array, non-ASCII escaped.
function pendingHeader(extra) {
  const p = pendingTimers();
  if (!p.length) return extra;
  const v = JSON.stringify(p).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return Object.assign({ 'x-fcsup-pending': v }, extra || {});
}

const code = process.env.FC_FUNC_CODE_PATH || '/code';
const [apiHost, apiPort] = (() => {
  const a = process.env.FC_RUNTIME_API || '127.0.0.1:19001';
  const i = a.lastIndexOf(':');
  return [a.slice(0, i) || '127.0.0.1', Number(a.slice(i + 1))];
})();
// One kept-alive connection, like FC's own agents.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

// The request being served (one at a time: FC 3.0 built-in runtimes have concurrency 1).
let currentRequestId = '';
// Settles the invocation in progress when its code throws asynchronously.
let failCurrent = null;

// `2023-04-01T10:04:19.024Z <request id> [info] message`: FC's Node.js log line, for
// console.* and context.logger alike. Writes to pipes are synchronous on Linux, so nothing is
// left in a buffer when the instance is frozen.
function logLine(level, args) {
  process.stdout.write(`${new Date().toISOString()} ${currentRequestId} [${level}] ${util.format(...args)}\n`);
}
const logger = {
  debug: (...a) => logLine('debug', a),
  info: (...a) => logLine('info', a),
  log: (...a) => logLine('info', a),
  warn: (...a) => logLine('warn', a),
  error: (...a) => logLine('error', a),
};
console.log = logger.log;
console.info = logger.info;
console.debug = logger.debug;
console.warn = logger.warn;
console.error = logger.error;

function api(method, p, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: apiHost, port: apiPort, method, path: `/${API_VERSION}/runtime/${p}`, agent, headers: headers || {} },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function post(p, body, contentType, extra) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const headers = Object.assign({ 'Content-Type': contentType, 'Content-Length': buf.length }, extra || {});
  const r = await api('POST', p, buf, headers);
  if (r.status !== 200) {
    process.stderr.write(`fcsup runtime: POST ${p}: ${r.status} ${r.body.toString()}\n`);
  }
}

// `index.handler` -> exports.handler of index.js (.cjs, .mjs; `dir/index.handler` works too).
async function load(name) {
  const dot = name.lastIndexOf('.');
  if (dot <= 0 || dot === name.length - 1) {
    throw new Error(`handler '${name}' is invalid: it must be FILE.FUNCTION, e.g. index.handler`);
  }
  const modName = name.slice(0, dot);
  const func = name.slice(dot + 1);
  const base = path.resolve(code, modName);
  const file = ['.js', '.cjs', '.mjs'].map((e) => base + e).find((f) => fs.existsSync(f));
  if (!file) {
    const e = new Error(`Cannot find module '${base}.js'`);
    e.name = 'ModuleNotFoundError';
    throw e;
  }
  let mod;
  if (file.endsWith('.mjs')) {
    mod = await import(pathToFileURL(file).href);
  } else {
    try {
      mod = require(file);
    } catch (e) {
      if (e && e.code !== 'ERR_REQUIRE_ESM') throw e;
      mod = await import(pathToFileURL(file).href);
    }
  }
  const fn = mod[func] !== undefined ? mod[func] : mod.default && mod.default[func];
  if (typeof fn !== 'function') {
    const e = new Error(`Handler '${func}' missing on module '${modName}'`);
    e.name = 'HandlerNotFoundError';
    throw e;
  }
  return fn;
}

function errorBody(err) {
  if (err instanceof Error) {
    return JSON.stringify({
      errorMessage: err.message,
      errorType: err.name,
      stackTrace: String(err.stack || '').split('\n'),
    });
  }
  return JSON.stringify({ errorMessage: typeof err === 'string' ? err : util.inspect(err) });
}

function toBuffer(result) {
  if (result === undefined || result === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(result)) return result;
  if (result instanceof Uint8Array) return Buffer.from(result);
  if (typeof result === 'string') return Buffer.from(result, 'utf8');
  return Buffer.from(JSON.stringify(result), 'utf8');
}

function context(h) {
  const int = (v) => (Number.isFinite(Number(v)) && v !== undefined && v !== '' ? Number(v) : 0);
  const deadline = int(h['x-fc-function-deadline']);
  return {
    requestId: h['x-fc-request-id'] || '',
    credentials: {
      accessKeyId: h['x-fc-access-key-id'] || '',
      accessKeySecret: h['x-fc-access-key-secret'] || '',
      securityToken: h['x-fc-security-token'] || '',
    },
    function: {
      name: h['x-fc-function-name'] || '',
      handler: h['x-fc-function-handler'] || '',
      memory: int(h['x-fc-function-memory']),
      timeout: int(h['x-fc-function-timeout']),
      initializer: h['x-fc-function-initializer'] || '',
      initializationTimeout: int(h['x-fc-initialization-timeout']),
      versionId: h['x-fc-version-id'] || '',
      qualifier: h['x-fc-qualifier'] || '',
    },
    service: {
      name: h['x-fc-service-name'] || '',
      logProject: h['x-fc-service-logproject'] || '',
      logStore: h['x-fc-service-logstore'] || '',
      qualifier: h['x-fc-qualifier'] || '',
      versionId: h['x-fc-version-id'] || '',
    },
    tracing: {
      openTracingSpanContext: h['x-fc-tracing-opentracing-span-context'] || '',
      openTracingSpanBaggages: h['x-fc-tracing-opentracing-span-baggages'] || '',
      jaegerEndpoint: h['x-fc-tracing-jaeger-endpoint'] || '',
    },
    region: h['x-fc-region'] || '',
    accountId: h['x-fc-account-id'] || '',
    instanceId: h['x-fc-instance-id'] || '',
    retryCount: int(h['x-fc-retry-count']),
    logger,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

// Runs `fn(...args)` in either of FC's styles: a callback as the last parameter when the
// function declares it, else the returned value (awaited when it is a promise).
// Resolves to { ok, value, handled }.
function runUserCode(fn, args, callbackArity) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (r) => {
      if (!settled) {
        settled = true;
        failCurrent = null;
        resolve(r);
      }
    };
    failCurrent = (err) => settle({ ok: false, value: err, handled: false });
    const callback = (err, value) => (err ? settle({ ok: false, value: err, handled: true }) : settle({ ok: true, value }));
    try {
      const out = fn(...args, callback);
      if (fn.length < callbackArity) {
        Promise.resolve(out).then((value) => settle({ ok: true, value }), (err) => settle({ ok: false, value: err, handled: false }));
      }
    } catch (err) {
      settle({ ok: false, value: err, handled: false });
    }
  });
}

process.on('uncaughtException', (err) => {
  if (failCurrent) failCurrent(err);
  else logger.error('uncaught exception outside an invocation:', err);
});
process.on('unhandledRejection', (err) => {
  if (failCurrent) failCurrent(err);
  else logger.error('unhandled rejection outside an invocation:', err);
});

async function serve(handler, initializer, res) {
  const h = res.headers;
  const rid = h['x-fc-request-id'] || '';
  const kind = Number(h['x-fc-function-type'] || 0);
  const label = KINDS[kind] || 'Invoke';
  currentRequestId = rid;
  const ctx = context(h);
  process.stdout.write(`FC ${label} Start RequestId: ${rid}\n`);
  let r;
  if (!(kind in HOOK_ENV)) {
    r = await runUserCode(handler, [res.body, ctx], 3);
  } else {
    let fn = kind === 1 ? initializer : null;
    try {
      if (!fn) {
        const name = process.env[HOOK_ENV[kind]] || h[HOOK_HEADER[kind]] || '';
        if (!name) throw new Error(`no ${label} handler is configured`);
        fn = await load(name);
      }
      r = await runUserCode(fn, [ctx], 2);
    } catch (err) {
      r = { ok: false, value: err, handled: false };
    }
  }
  let result;
  if (r.ok) {
    try {
      result = kind in HOOK_ENV ? Buffer.alloc(0) : toBuffer(r.value);
    } catch (err) {
      r = { ok: false, value: err, handled: false };
    }
  }
  // The marker goes out before the answer: the instance may be frozen right after it.
  if (r.ok) {
    process.stdout.write(`FC ${label} End RequestId: ${rid}\n`);
    await post(`invocation/${rid}/response`, result, 'application/octet-stream', pendingHeader());
  } else {
    logger.error(r.value);
    process.stdout.write(`FC ${label} End RequestId: ${rid}, Error: ${r.handled ? 'Handled' : 'Unhandled'} function error\n`);
    const extra = r.handled ? { 'x-fc-error-type': 'HandledInvocationError' } : {};
    await post(`invocation/${rid}/error`, errorBody(r.value), 'application/json', pendingHeader(extra));
  }
  currentRequestId = '';
}

async function main() {
  // FC's module search path: the code's node_modules, then layers under /opt/nodejs.
  const extra = [path.join(code, 'node_modules'), '/opt/nodejs/node_modules'];
  process.env.NODE_PATH = [process.env.NODE_PATH, ...extra].filter(Boolean).join(path.delimiter);
  Module._initPaths();
  let handler;
  let initializer = null;
  try {
    process.chdir(code);
    handler = await load(process.env.FC_FUNCTION_HANDLER || 'index.handler');
    if (process.env.FC_INITIALIZER_HANDLER) initializer = await load(process.env.FC_INITIALIZER_HANDLER);
  } catch (err) {
    process.stderr.write(`${(err && err.stack) || err}\n`);
    try {
      await post('init/error', errorBody(err), 'application/json');
    } finally {
      process.exit(129);
    }
  }
  let delay = 10;
  for (;;) {
    let res;
    try {
      res = await api('GET', 'invocation/next');
      delay = 10;
    } catch (err) {
      process.stderr.write(`fcsup runtime: cannot reach the runtime API at ${apiHost}:${apiPort}: ${err.message}\n`);
      await new Promise((r) => realSetTimeout(r, delay));
      delay = Math.min(delay * 2, 1000);
      continue;
    }
    if (res.status !== 200) {
      process.stderr.write(`fcsup runtime: GET next: ${res.status} ${res.body.toString()}\n`);
      await new Promise((r) => realSetTimeout(r, 50));
      continue;
    }
    try {
      await serve(handler, initializer, res);
    } catch (err) {
      process.stderr.write(`fcsup runtime: cannot post to the runtime API: ${err.message}\n`);
    }
  }
}

main();
