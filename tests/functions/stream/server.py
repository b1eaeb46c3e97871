"""Test fixture for streaming through fcsup (tests/streaming.rs), on an HTTP trigger:
GET /chunks?n=N&gap=S  N chunks, S seconds apart, each flushed as written (chunked);
GET /sse?n=N           N Server-Sent Events, 0.2 s apart;
GET /after             sends its answer but for the last byte, prints `AFTER <request id>`,
                       then sends the last byte: fcsup's reader may see the line after the
                       answer (as with FC's Node.js template printing `FC Invoke End` around
                       `res.send`);
GET /flood             64 KiB chunks without end, until the connection breaks;
POST /echo             the request body back, read in pieces as it arrives;
POST /pieces           a chunked request body answered piece by piece as each arrives
                       (`got <piece>` per piece, streamed): a conversation over one exchange;
GET /ws                a WebSocket that echoes text messages."""
import base64
import hashlib
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def head(self, ctype):
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        rid = self.headers.get("x-fc-request-id", "")
        if url.path == "/chunks":
            self.head("text/plain")
            for i in range(int(q.get("n", 5))):
                if i:
                    time.sleep(float(q.get("gap", 0.3)))
                print(f"CHUNK {i} {rid}", flush=True)
                self.chunk(f"chunk-{i}\n".encode())
            self.chunk(b"")
        elif url.path == "/sse":
            self.head("text/event-stream")
            for i in range(int(q.get("n", 3))):
                if i:
                    time.sleep(0.2)
                self.chunk(f"id: {i}\ndata: event {i}\n\n".encode())
            self.chunk(b"")
        elif url.path == "/after":
            body = b"answered\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:-1])
            self.wfile.flush()
            print(f"AFTER {rid}", flush=True)
            self.wfile.write(body[-1:])
            self.wfile.flush()
        elif url.path == "/flood":
            self.head("application/octet-stream")
            print(f"FLOOD {rid}", flush=True)
            try:
                while True:
                    self.chunk(b"x" * 65536)
            except OSError:
                pass
        elif url.path == "/ws":
            self.websocket()
        else:
            self.send_error(404)

    def do_POST(self):
        if self.path == "/pieces":
            self.head("text/plain")
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                piece = self.rfile.read(size) if size else b""
                self.rfile.readline()
                if not size:
                    break
                self.chunk(b"got " + piece + b"\n")
            self.chunk(b"")
            return
        n = int(self.headers.get("content-length", 0))
        got = b""
        while len(got) < n:
            piece = self.rfile.read1(n - len(got))
            if not piece:
                break
            got += piece
        self.send_response(200)
        self.send_header("content-length", str(len(got)))
        self.end_headers()
        self.wfile.write(got)

    def websocket(self):
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            h = self.rfile.read(2)
            if len(h) < 2:
                return
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = int.from_bytes(self.rfile.read(2), "big")
            mask = self.rfile.read(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            print(f"WS {data.decode()}", flush=True)
            self.wfile.write(bytes([0x81, len(data)]) + data)
            self.wfile.flush()


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
