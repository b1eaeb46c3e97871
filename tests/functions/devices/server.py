"""Test fixture: probes the device cgroup from inside an instance. `{"op": "probe", "major": M}`
(and `"dir": D`, default /dev) opens /dev/null and /dev/zero, tries to mknod a char device M:1
in D and to open it, and reports each errno (0 = it worked) with its /proc/self/cgroup.
`{"op": "look", "open": [paths], "read": [paths], "write": [paths], "env": [names]}` reports the
errno of opening each (read-write), each file's text (or its errno), whether each can be
written, and those variables."""
import json
import os
import stat
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def errno_of(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def open_close(path, flags):
    os.close(os.open(path, flags))


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return e.errno


def write(path):
    def w():
        with open(path, "a") as f:
            f.write("x")
    return errno_of(w)


def look(req):
    return {
        "open": {p: errno_of(lambda p=p: open_close(p, os.O_RDWR)) for p in req.get("open", [])},
        "read": {p: read(p) for p in req.get("read", [])},
        "write": {p: write(p) for p in req.get("write", [])},
        "env": {k: os.environ.get(k) for k in req.get("env", [])},
    }


def probe(major, directory):
    node = directory + "/fcsup-test-node"
    out = {
        "dev_null": errno_of(lambda: open_close("/dev/null", os.O_RDWR)),
        "dev_zero": errno_of(lambda: open_close("/dev/zero", os.O_RDONLY)),
        "mknod": errno_of(lambda: os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, 1))),
    }
    out["open_own_node"] = errno_of(lambda: open_close(node, os.O_RDONLY)) if out["mknod"] == 0 else None
    with open("/proc/self/cgroup") as f:
        out["self_cgroup"] = f.read()
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if req.get("op") == "probe":
            data = json.dumps(probe(req["major"], req.get("dir", "/dev"))).encode()
        elif req.get("op") == "look":
            data = json.dumps(look(req)).encode()
        else:
            data = json.dumps(req).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
