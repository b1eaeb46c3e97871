// A Node.js function for fcsup's built-in runtime tests (tests/runtime_api.rs): FC 3.0
// handler signatures, echoing what the runtime gave it.
'use strict';

const initialized = [];

exports.initialize = (context, callback) => {
  initialized.push(context.requestId);
  console.log('initializer ran for', context.requestId);
  callback(null, '');
};

exports.preStop = async (context) => {
  console.log('preStop ran for', context.requestId);
};

exports.handler = async (event, context) => {
  const text = event.toString();
  const ev = text.startsWith('{') ? JSON.parse(text) : {};
  if (ev.version === 'v1') {
    const http = ev.requestContext.http;
    return {
      statusCode: 202,
      headers: { 'Content-Type': 'text/plain', 'X-Raw-Path': ev.rawPath },
      body: Buffer.from(`${http.method} ${http.path} ${JSON.stringify(ev.queryParameters)} ${Buffer.from(ev.body, ev.isBase64Encoded ? 'base64' : 'utf8').toString('hex')}`).toString('base64'),
      isBase64Encoded: true,
    };
  }
  if (ev.cmd === 'raise') throw new TypeError(`bad input: ${ev.why || ''}`);
  if (ev.cmd === 'log') {
    context.logger.info('hello from the logger');
    console.log('console says', 42);
    return 'logged';
  }
  if (ev.cmd === 'async-throw') {
    // Thrown outside the handler's promise chain: the runtime still fails this invocation.
    setTimeout(() => { throw new RangeError('thrown later'); }, 1);
    return new Promise(() => {});
  }
  return {
    isBuffer: Buffer.isBuffer(event),
    event: text,
    requestId: context.requestId,
    function: context.function,
    credentials: context.credentials,
    region: context.region,
    accountId: context.accountId,
    retryCount: context.retryCount,
    initialized,
    cwd: process.cwd(),
    nodePath: process.env.NODE_PATH,
  };
};

exports.callback = (event, context, callback) => {
  if (event.toString() === 'fail') callback(new Error('handled failure'));
  else callback(null, `cb:${event.toString()}`);
};
