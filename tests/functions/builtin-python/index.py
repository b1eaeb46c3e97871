# fcsup's built-in runtime fixture for freezing and layers (tests/builtin_runtimes.rs): a
# background thread counts while the instance runs, and a module comes from a layer.
import json
import threading
import time

ticks = [0]


def _count():
    while True:
        ticks[0] += 1
        time.sleep(0.001)


threading.Thread(target=_count, daemon=True).start()


def handler(event, context):
    ev = json.loads(event or b"{}")
    if ev.get("cmd") == "hold":
        before = ticks[0]
        time.sleep(ev["ms"] / 1000)
        return {"before": before, "after": ticks[0]}
    if ev.get("cmd") == "layer":
        import fcsup_layer_probe

        try:
            import fcsup_layer_base

            base = fcsup_layer_base.VALUE
        except ImportError:
            base = None
        return {"value": fcsup_layer_probe.VALUE, "file": fcsup_layer_probe.__file__, "base": base}
    if ev.get("cmd") == "poison":
        # A hostile (or confused) function reporting an init error after its start.
        import http.client
        import os

        host, port = os.environ["FC_RUNTIME_API"].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("POST", "/2020-11-11/runtime/init/error", body=json.dumps({"errorMessage": "poisoned late"}))
        return {"status": c.getresponse().status}
    return {"ticks": ticks[0]}
