"""An FC built-in runtime function (runtime: python3.10, handler: index.handler).

FC's Python runtime calls handler(event, context) with the event as bytes. A background
thread ticks every 10 ms; fcsup freezes the instance between invocations, as FC does, so
the thread does not tick while the function is idle.
"""
import json
import threading
import time

ticks = 0
initialized_by = None


def ticker():
    global ticks
    while True:
        time.sleep(0.01)
        ticks += 1


def initialize(context):
    global initialized_by
    initialized_by = context.request_id
    threading.Thread(target=ticker, daemon=True).start()
    context.getLogger().info("initialized: background ticker started")


def handler(event, context):
    context.getLogger().info("handling %d bytes", len(event))
    return json.dumps({"hello": event.decode() or "world", "ticks": ticks, "initialized_by": initialized_by})


def pre_stop(context):
    context.getLogger().info("pre_stop: %d ticks in total", ticks)
