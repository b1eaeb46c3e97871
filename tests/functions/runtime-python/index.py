# A Python function for fcsup's built-in runtime tests (tests/runtime_api.rs): FC 3.0
# handler signatures, echoing what the runtime gave it.
import json
import logging
import os
import sys

initialized = []


def initialize(context):
    initialized.append(context.request_id)
    print("initializer ran for", context.request_id)


def pre_stop(context):
    print("pre_stop ran for", context.request_id)


def handler(event, context):
    ev = json.loads(event) if event.startswith(b"{") else {}
    if ev.get("version") == "v1":
        # An HTTP trigger's event: answer with FC's response shape.
        http = ev["requestContext"]["http"]
        return {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json", "X-Raw-Path": ev["rawPath"]},
            "body": json.dumps({
                "method": http["method"],
                "path": http["path"],
                "query": ev["queryParameters"],
                "body": ev["body"],
                "isBase64Encoded": ev["isBase64Encoded"],
                "contentType": ev["headers"].get("Content-Type"),
            }),
            "isBase64Encoded": False,
        }
    cmd = ev.get("cmd")
    if cmd == "raise":
        raise ValueError("bad input: " + ev.get("why", ""))
    if cmd == "log":
        context.getLogger().info("hello from the logger")
        logging.getLogger().warning("root logger warning")
        print("plain print")
        return "logged"
    if cmd == "bytes":
        return b"\x00\x01raw"
    return {
        "event_type": type(event).__name__,
        "event": event.decode(),
        "request_id": context.request_id,
        "function": {
            "name": context.function.name,
            "handler": context.function.handler,
            "memory": context.function.memory,
            "timeout": context.function.timeout,
            "initializer": context.function.initializer,
        },
        "credentials": [context.credentials.access_key_id, context.credentials.access_key_secret, context.credentials.security_token],
        "region": context.region,
        "account_id": context.account_id,
        "service": context.service.name,
        "retry_count": context.retry_count,
        "initialized": initialized,
        "cwd": os.getcwd(),
        "sys_path": sys.path[:3],
        "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 60000,
    }
