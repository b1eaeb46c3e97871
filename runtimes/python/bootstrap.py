"""fcsup's Python runtime agent: runs FC 3.0 Python handlers over FC's runtime API.

It loops on `GET http://$FC_RUNTIME_API/2020-11-11/runtime/invocation/next`, runs what the call's
`x-fc-function-type` names (0 the handler, 1 the Initializer, 2 PreStop, 3 PreFreeze) and posts
the result to `.../invocation/{id}/response` or `.../{id}/error`; a handler that cannot be
loaded is posted to `.../runtime/init/error` and the agent exits with status 129.

Environment (FC's names where FC has one):
  FC_RUNTIME_API          host:port of the runtime API (default 127.0.0.1:19001)
  FC_FUNC_CODE_PATH       the code directory, also the working directory (default /code)
  FC_FUNCTION_HANDLER     the handler, `index.handler` = function handler in index.py
  FC_INITIALIZER_HANDLER  the Initializer, e.g. `index.initialize` (optional)
  FC_PRE_STOP_HANDLER     the PreStop hook, e.g. `index.pre_stop` (optional; fcsup's name)
  FC_PRE_FREEZE_HANDLER   the PreFreeze hook (optional; fcsup's name, FC 2.0 only)
A hook name missing from the environment is taken from the call's headers
(`x-fc-function-initializer`, `x-fc-instance-lifecycle-pre-stop-handler`, ...).

Handlers: `handler(event: bytes, context)`, `initialize(context)`, `pre_stop(context)`.
Standard library only. See docs/runtime-api.md.
"""

import sys

# FC's runtimes write output as it is produced: nothing may sit in a buffer when the
# instance is frozen right after the response.
for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.reconfigure(line_buffering=True, write_through=True)
    except (AttributeError, ValueError):
        pass

import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

API_VERSION = "2020-11-11"
AGENT_FILE = os.path.abspath(__file__)
KINDS = {0: "Invoke", 1: "Initialize", 2: "PreStop", 3: "PreFreeze"}
HOOK_ENV = {1: "FC_INITIALIZER_HANDLER", 2: "FC_PRE_STOP_HANDLER", 3: "FC_PRE_FREEZE_HANDLER"}
HOOK_HEADER = {
    1: "x-fc-function-initializer",
    2: "x-fc-instance-lifecycle-pre-stop-handler",
    3: "x-fc-instance-lifecycle-pre-freeze-handler",
}

# Freeze hazards (README): the event loops the function makes, noted once it imports asyncio
# (never imported here: that costs a cold start ~100 ms), so that each answer can list the
# tasks and timers it leaves pending in `x-fcsup-pending` (FC freezes right after it).
_loops = None


class _AsyncioWatch:
    """A meta path finder that, when `asyncio.base_events` is first imported, makes every
    event loop created from then on join `_loops`; it then leaves `sys.meta_path`."""

    def find_spec(self, name, path=None, target=None):
        global _loops
        if name != "asyncio.base_events":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        import weakref

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        _loops = weakref.WeakSet()
        exec_module = spec.loader.exec_module

        def exec_and_watch(module):
            exec_module(module)
            init = module.BaseEventLoop.__init__

            def watched_init(self, *args, **kwargs):
                init(self, *args, **kwargs)
                _loops.add(self)

            module.BaseEventLoop.__init__ = watched_init

        spec.loader.exec_module = exec_and_watch
        return spec


sys.meta_path.insert(0, _AsyncioWatch())


def _name(fn):
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def pending():
    """The asyncio tasks and timers still pending in the function's open event loops."""
    out = []
    if not _loops or "asyncio" not in sys.modules:
        return out
    import asyncio

    for loop in list(_loops):
        if loop.is_closed():
            continue
        for t in asyncio.all_tasks(loop):
            out.append("asyncio task %s (%s)" % (t.get_name(), _name(t.get_coro())))
        for h in list(getattr(loop, "_scheduled", ())):
            cb = getattr(h, "_callback", None)
            # A task's own sleep is its timer: the task is listed already.
            if h.cancelled() or _name(cb).endswith("_set_result_unless_cancelled"):
                continue
            out.append("asyncio timer %s in %.0f ms" % (_name(cb), max(0.0, (h.when() - loop.time()) * 1000)))
    return [p[:200] for p in out[:32]]


def pending_header():
    try:
        p = pending()
    except Exception:  # noqa: BLE001 (a report must never break an answer)
        return {}
    return {"x-fcsup-pending": json.dumps(p)} if p else {}


# The request being served (one at a time: FC 3.0 built-in runtimes have concurrency 1).
current_request_id = ""


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record, as FC's log format shows it."""

    def filter(self, record):
        record.request_id = current_request_id
        return True


class FCFormatter(logging.Formatter):
    """`2017-07-05T05:13:35.920Z <request id> [INFO] message`, FC's Python log line."""

    def formatTime(self, record, datefmt=None):
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".%03dZ" % (record.msecs,)


def setup_logging():
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(FCFormatter("%(asctime)s %(request_id)s [%(levelname)s] %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class Credentials:
    def __init__(self, h):
        self.access_key_id = h.get("x-fc-access-key-id", "")
        self.access_key_secret = h.get("x-fc-access-key-secret", "")
        self.security_token = h.get("x-fc-security-token", "")
        # FC's Python runtime also offers the camel-case names.
        self.accessKeyId = self.access_key_id
        self.accessKeySecret = self.access_key_secret
        self.securityToken = self.security_token


class FunctionMeta:
    def __init__(self, h):
        self.name = h.get("x-fc-function-name", "")
        self.handler = h.get("x-fc-function-handler", "")
        self.memory = _int(h.get("x-fc-function-memory"))
        self.timeout = _int(h.get("x-fc-function-timeout"))
        self.initializer = h.get("x-fc-function-initializer", "")
        self.initialization_timeout = _int(h.get("x-fc-initialization-timeout"))
        self.version_id = h.get("x-fc-version-id", "")
        self.qualifier = h.get("x-fc-qualifier", "")


class ServiceMeta:
    def __init__(self, h):
        self.name = h.get("x-fc-service-name", "")
        self.log_project = h.get("x-fc-service-logproject", "")
        self.log_store = h.get("x-fc-service-logstore", "")
        self.qualifier = h.get("x-fc-qualifier", "")
        self.version_id = h.get("x-fc-version-id", "")


class Tracing:
    def __init__(self, h):
        self.span_context = h.get("x-fc-tracing-opentracing-span-context", "")
        self.jaeger_endpoint = h.get("x-fc-tracing-jaeger-endpoint", "")
        self.span_baggages = h.get("x-fc-tracing-opentracing-span-baggages", "")


class FCContext:
    """FC's `context`: the fields of Python 3.9/3.10 runtimes plus 3.12's."""

    def __init__(self, h):
        self.request_id = h.get("x-fc-request-id", "")
        self.credentials = Credentials(h)
        self.function = FunctionMeta(h)
        self.service = ServiceMeta(h)
        self.region = h.get("x-fc-region", "")
        self.account_id = h.get("x-fc-account-id", "")
        self.retry_count = _int(h.get("x-fc-retry-count"))
        self.tracing = Tracing(h)
        self.instance_id = h.get("x-fc-instance-id", "")
        self.log_project = self.service.log_project
        self.log_store = self.service.log_store
        self.deadline_ms = _int(h.get("x-fc-function-deadline"))
        self.logger = logging.getLogger()

    def getLogger(self):
        return self.logger

    def get_remaining_time_in_millis(self):
        return max(0, self.deadline_ms - int(time.time() * 1000))


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


class RuntimeApi:
    """A kept-alive HTTP/1.1 connection to the runtime API, reopened when it breaks. Plain
    sockets: `http.client` pulls in `email` and `ssl`, ~20 ms of every cold start."""

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the runtime API closed the connection")
        self.buf += data

    def _until(self, sep):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(sep):]
                return out
            self._fill()

    def _exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _exchange(self, method, path, body, headers):
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = body or b""
        lines = ["%s /%s/runtime/%s HTTP/1.1" % (method, API_VERSION, path), "Host: %s:%d" % (self.host, self.port)]
        lines.append("Content-Length: %d" % len(body))
        lines.extend("%s: %s" % kv for kv in headers.items())
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        hdrs = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._until(b"\r\n"):
                        pass  # trailers, up to the empty line
                    break
                data += self._exactly(size)
                self._exactly(2)
        else:
            data = self._exactly(int(hdrs.get("content-length", "0")))
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, data

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            try:
                return self._exchange(method, path, body, headers or {})
            except (OSError, ValueError, IndexError):
                self.close()
                if attempt:
                    raise

    def post(self, path, body, content_type="application/json", extra=None):
        headers = {"Content-Type": content_type}
        headers.update(extra or {})
        status, _, data = self.request("POST", path, body, headers)
        if status != 200:
            sys.stderr.write("fcsup runtime: POST %s: %d %s\n" % (path, status, data.decode("utf-8", "replace")))


def load(name):
    """`index.handler` -> function handler of module index (`dir/index.handler` works too)."""
    module_name, sep, func = name.rpartition(".")
    if not sep or not module_name or not func:
        raise ValueError("handler %r is invalid: it must be FILE.FUNCTION, e.g. index.handler" % name)
    module = importlib.import_module(module_name.replace("/", "."))
    fn = getattr(module, func, None)
    if fn is None:
        raise AttributeError("Handler '%s' is missing on module '%s'" % (func, module_name))
    if not callable(fn):
        raise TypeError("Handler '%s' of module '%s' is not a function" % (func, module_name))
    return fn


def error_body(e):
    """FC's error body: errorMessage, errorType and stackTrace (frames outside the agent)."""
    frames = [
        ['File "%s"' % f.filename, "line %d" % f.lineno, "in %s" % f.name, f.line or ""]
        for f in traceback.extract_tb(e.__traceback__)
        if os.path.abspath(f.filename) != AGENT_FILE
    ]
    return json.dumps({"errorMessage": str(e), "errorType": type(e).__name__, "stackTrace": frames}).encode()


def to_bytes(result):
    if result is None:
        return b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    return json.dumps(result).encode("utf-8")


def serve(api, handler, initializer, status, headers, body):
    global current_request_id
    if status != 200:
        sys.stderr.write("fcsup runtime: GET next: %d %s\n" % (status, body.decode("utf-8", "replace")))
        time.sleep(0.05)
        return
    rid = headers.get("x-fc-request-id", "")
    kind = _int(headers.get("x-fc-function-type"))
    label = KINDS.get(kind, "Invoke")
    current_request_id = rid
    context = FCContext(headers)
    print("FC %s Start RequestId: %s" % (label, rid))
    try:
        if kind not in HOOK_ENV:
            result = to_bytes(handler(body, context))
        else:
            fn = initializer if kind == 1 and initializer else None
            if fn is None:
                name = os.environ.get(HOOK_ENV[kind]) or headers.get(HOOK_HEADER[kind], "")
                if not name:
                    raise RuntimeError("no %s handler is configured" % label)
                fn = load(name)
            fn(context)
            result = b""
    except Exception as e:  # noqa: BLE001 (the function's failure is reported, not raised)
        logging.getLogger().error("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
        print("FC %s End RequestId: %s, Error: Unhandled function error" % (label, rid))
        api.post("invocation/%s/error" % rid, error_body(e), extra=pending_header())
    else:
        # The marker goes out before the response: the instance may be frozen right after it.
        print("FC %s End RequestId: %s" % (label, rid))
        api.post("invocation/%s/response" % rid, result, "application/octet-stream", pending_header())
    finally:
        current_request_id = ""


def main():
    code = os.environ.get("FC_FUNC_CODE_PATH") or "/code"
    api = RuntimeApi(os.environ.get("FC_RUNTIME_API") or "127.0.0.1:19001")
    setup_logging()
    # FC's search path: the code, its python/ directory (where `s build` installs packages),
    # then layers under /opt/python; not the agent's own directory.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(AGENT_FILE):
        sys.path.pop(0)
    for p in reversed([code, os.path.join(code, "python"), "/opt/python"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        os.chdir(code)
        handler = load(os.environ.get("FC_FUNCTION_HANDLER") or "index.handler")
        init_name = os.environ.get("FC_INITIALIZER_HANDLER")
        initializer = load(init_name) if init_name else None
    except BaseException as e:  # noqa: BLE001 (SyntaxError, SystemExit at import: all init errors)
        traceback.print_exc()
        try:
            api.post("init/error", error_body(e))
        finally:
            sys.exit(129)
    delay = 0.01
    while True:
        try:
            status, headers, body = api.request("GET", "invocation/next")
            delay = 0.01
        except (OSError, ValueError, IndexError) as e:
            sys.stderr.write("fcsup runtime: cannot reach the runtime API at %s:%d: %s\n" % (api.host, api.port, e))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        try:
            serve(api, handler, initializer, status, headers, body)
        except (OSError, ValueError, IndexError) as e:
            sys.stderr.write("fcsup runtime: cannot post to the runtime API: %s\n" % (e,))


if __name__ == "__main__":
    main()
