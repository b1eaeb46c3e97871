"""An FC custom-runtime function: a web server on port 9000 with lifecycle hooks.

A background thread ticks every 10 ms. While fcsup keeps the instance frozen between
requests the thread does not run, so `ticks` barely moves across idle gaps.
"""
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ticks = 0
invocations = 0
initialized_at = None


def ticker():
    global ticks
    while True:
        time.sleep(0.01)
        ticks += 1


def log(msg):
    print(msg, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def reply(self, code, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        global invocations, initialized_at
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace")
        rid = self.headers.get("x-fc-request-id", "")
        if self.path == "/initialize":
            log(f"FC Initialize Start RequestId: {rid}")
            time.sleep(0.05)  # load a model, open connections...
            initialized_at = time.time()
            log(f"FC Initialize End RequestId: {rid}")
            return self.reply(200, "")
        invocations += 1
        log(f"handling invocation {invocations}: {body!r}")
        out = {
            "message": f"{os.environ.get('GREETING', 'Hello')}, {body or 'world'}!",
            "invocation": invocations,
            "backgroundTicks": ticks,
            "instance": os.environ.get("FC_INSTANCE_ID"),
            "pid": os.getpid(),
        }
        self.reply(200, json.dumps(out))

    def do_GET(self):
        rid = self.headers.get("x-fc-request-id", "")
        if self.path == "/pre-freeze":
            log(f"FC PreFreeze Start RequestId: {rid}")
            log(f"FC PreFreeze End RequestId: {rid}")
            return self.reply(200, "")
        if self.path == "/pre-stop":
            log(f"FC PreStop Start RequestId: {rid}")
            log(f"flushing state after {invocations} invocations")
            log(f"FC PreStop End RequestId: {rid}")
            return self.reply(200, "")
        self.reply(200, json.dumps({"path": self.path, "ticks": ticks}))

    def log_message(self, *args):
        pass


def on_sigterm(*_):
    log("SIGTERM received, exiting")
    sys.exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=ticker, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
