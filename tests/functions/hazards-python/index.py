# Freeze-hazard fixture for fcsup's Python runtime (tests/freeze_hazards.rs): `asyncio` leaves
# a task named `flush-metrics` pending on the function's own event loop; anything else is clean.
import asyncio

loop = asyncio.new_event_loop()


async def flush_metrics():
    await asyncio.sleep(30)


async def start_flush():
    asyncio.get_running_loop().create_task(flush_metrics(), name="flush-metrics")


def handler(event, context):
    if event == b"asyncio":
        loop.run_until_complete(start_flush())
    return "ok"
