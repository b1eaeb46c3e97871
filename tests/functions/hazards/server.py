"""Freeze-hazard fixture (tests/freeze_hazards.rs): an FC custom-runtime server that does one
risky thing that goes on after it answers, named by the request body: `thread` leaves a thread named
`spinner` computing, `socket` leaves bytes unsent to a peer on the instance's loopback that
never reads, `child` leaves a `sleep` child running; anything else is a clean answer."""
import ctypes
import os
import socket
import subprocess
import sys
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

PEER_PORT = 7070
kept = []


def spin():
    # The thread's name as the kernel shows it (PR_SET_NAME).
    ctypes.CDLL(None).prctl(15, b"spinner", 0, 0, 0)
    # Hashing a large buffer runs without the GIL, so the thread computes whatever the main
    # thread does (a pure-Python loop could be waiting for the GIL at the freeze).
    big = b"x" * (1 << 20)
    while True:
        hashlib.sha256(big).digest()


def fill_peer():
    s = socket.create_connection(("127.0.0.1", PEER_PORT))
    s.setblocking(False)
    try:
        while True:
            s.send(b"x" * 65536)
    except BlockingIOError:
        pass
    kept.append(s)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        op = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        # Started before the answer, still at it when the instance is frozen right after.
        risky = {"thread": lambda: threading.Thread(target=spin, daemon=True).start(), "socket": fill_peer,
                 "child": lambda: kept.append(subprocess.Popen(["sleep", "30"]))}.get(op)
        if risky:
            risky()
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


if __name__ == "__main__":
    # The peer listens on the loopback and never accepts nor reads; started before the
    # instance is ready, so it is no child hazard itself.
    peer = "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',%d))\ns.listen()\ntime.sleep(1e6)\n" % PEER_PORT
    kept.append(subprocess.Popen([sys.executable, "-c", peer]))
    import time
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", PEER_PORT)).close()
            break
        except OSError:
            time.sleep(0.01)
    # One thread serves (every op returns at once): the answer is finished on the main thread,
    # which fcsup takes as finishing it; a thread per connection could be caught doing so on a
    # loaded host and reported (README, Freeze hazards).
    HTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
