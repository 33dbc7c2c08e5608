"""Run as a script, takes one ``counting`` cast and dies (``os._exit``) at a given step of it.

``python accept_crash.py STATE_PATH MARKER_DIR REQUEST_ID STEP``, STEP one of:

- ``before_flow_detail``: nothing is saved yet;
- ``after_flow_detail``: the flow detail is saved, the record not inserted;
- ``after_record``: the record is inserted, ``take`` has not returned (the broker gets no ack);
- ``after_take``: ``take`` returned, the flow has not run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_flows import make_runner  # noqa: E402

STEPS = ("before_flow_detail", "after_flow_detail", "after_record", "after_take")


def envelope(markers: str, request_id: str) -> dict:
    """The cast every crash and every redelivery sends."""
    return {"event": "counting", "request_id": request_id, "payload": {"marker_dir": markers}}


def die(*_args, **_kwargs):
    """Stop the process at once, as a kill would: no cleanup, no flush."""
    os._exit(9)


def main(state: str, markers: str, request_id: str, step: str) -> None:
    runner = make_runner(state)
    store = runner.drivers.state_store
    if step == "before_flow_detail":
        runner._new_flow_detail = die
    elif step == "after_flow_detail":
        store.insert_if_absent = die
    elif step == "after_record":
        insert = store.insert_if_absent
        store.insert_if_absent = lambda record: (insert(record), die())
    runner.take(envelope(markers, request_id))
    die()


if __name__ == "__main__":
    main(*sys.argv[1:5])
