"""Test fixture: a hostile function. `{"op": "probe"}` tries what a function must not be able
to do to the host and reports each outcome; `{"op": "alloc", "mb": N}` allocates until the
memory limit stops it; `{"op": "burn"}` spins; every other body is echoed."""
import ctypes
import errno
import json
import os
import socket
import subprocess
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    try:
        r = fn()
        return {"ok": True, "value": r}
    except Exception as e:  # noqa: BLE001 - every failure is the answer
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def syscall_errno(r):
    if r == 0:
        return 0
    return ctypes.get_errno()


def write(path, data):
    with open(path, "w") as f:
        f.write(data)


def read(path, n=4096):
    with open(path, "rb") as f:
        return f.read(n).decode(errors="replace")


def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.close()
    return port


def _vsock_high():
    """socket(AF_VSOCK) with bits above the int the kernel reads set in the domain."""
    fd = libc.syscall(41, ctypes.c_long(0x100000028), 1, 0)
    if fd >= 0:
        os.close(fd)
        return 0
    return -1


def probe():
    status = read("/proc/self/status", 65536)
    field = lambda k: next((l.split(":", 1)[1].strip() for l in status.splitlines() if l.startswith(k + ":")), None)
    os.makedirs("/tmp/m", exist_ok=True)
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "seccomp": field("Seccomp"),
        "cap_eff": field("CapEff"),
        "write_printk_ratelimit": attempt(lambda: write("/proc/sys/kernel/printk_ratelimit", "7")),
        "write_core_pattern": attempt(lambda: write("/proc/sys/kernel/core_pattern", "|/tmp/x")),
        "read_shadow": attempt(lambda: read("/etc/shadow")),
        "read_kcore": attempt(lambda: len(read("/proc/kcore", 16))),
        "unshare_user_errno": syscall_errno(libc.unshare(0x10000000)),
        "clone3_errno": syscall_errno(libc.syscall(435, None, 0)),
        "unshare_mount_errno": syscall_errno(libc.unshare(0x00020000)),
        "mount_errno": syscall_errno(libc.mount(b"tmpfs", b"/tmp/m", b"tmpfs", 0, None)),
        "proc1_cmdline": attempt(lambda: read("/proc/1/cmdline")),
        "self_cgroup": read("/proc/self/cgroup"),
        "bind_80": attempt(lambda: bind(80)),
        "open_dev_stdout": attempt(lambda: open("/dev/stdout", "w").close()),
        "ptrace_errno": syscall_errno(libc.ptrace(16, 1, None, None)),  # PTRACE_ATTACH to pid 1
        "write_tmp": attempt(lambda: write("/tmp/ok", "x")),
        "vsock": attempt(lambda: socket.socket(40, socket.SOCK_STREAM).close()),
        # the same with bits above the int the kernel reads: must be refused too
        "vsock_high_bits_errno": syscall_errno(_vsock_high()),
        "write_dev_null": attempt(lambda: write("/dev/null", "x")),
        "read_dev_urandom": attempt(lambda: len(read("/dev/urandom", 16))),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = json.loads(body or b"{}")
        op = req.get("op")
        if op == "probe":
            return self.reply(200, probe())
        if op == "dd_hogs":  # many small processes, each smaller than the supervisor
            procs = [subprocess.Popen(["dd", "if=/dev/zero", "of=/dev/null", "bs=" + str(req.get("bs_mb", 4)) + "M"], stderr=subprocess.DEVNULL) for _ in range(req.get("n", 48))]
            time.sleep(req.get("hold_s", 1))
            killed = sum(1 for p in procs if p.poll() == -9)
            for p in procs:
                p.kill()
                p.wait()
            return self.reply(200, {"started": len(procs), "oom_killed": killed})
        if op == "big_response":  # more than FC's 32 MB, streamed
            mb = req.get("mb", 64)
            self.send_response(200)
            self.send_header("Content-Length", str(mb * 1024 * 1024))
            self.end_headers()
            chunk = b"x" * (1024 * 1024)
            try:
                for _ in range(mb):
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        if op == "alloc":
            hog = []
            for _ in range(req.get("mb", 1024)):
                hog.append(bytearray(1024 * 1024))  # zero-filled: every page touched
            return self.reply(200, {"allocated_mb": len(hog)})
        return self.reply(200, req)

    def do_GET(self):
        self.reply(200, {})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
