"""``keramos jobs list|show``: the jobs of the jobboard (jobboard mode), for operators."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keramos.framework.cli.progress import print_json

_DESCRIPTION = """\
In jobboard mode ([jobboard] enabled) every accepted cast is a job on a shared taskflow
jobboard until a worker's conductor has run its flow to the end. These commands read the board
and the persistence backend of the configuration given with --config-file:

  UNCLAIMED  waiting for a conductor
  CLAIMED    a conductor runs it (OWNER is <host>.<pid>; CLAIM_AGE the seconds since it was
             claimed); if that worker dies, another claims it once the claim expires
             ([jobboard] claim_timeout) and resumes it from LAST_COMPLETED
  PARKED     taken off the board after [jobboard] max_attempts claims that did not end (the
             worker died each time): recorded as failed (JobParked); not reverted: what its
             completed tasks did is still there

ATTEMPTS counts the claims of a job. The board is waited for at most --timeout seconds."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list and show the jobs of the jobboard (jobboard mode)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser(
        "list",
        help="every job: state, owner, claim age, attempts, last completed task",
        description="List the jobs on the board, oldest first, then the parked ones.",
    )
    listing.add_argument("--no-parked", action="store_true", help="leave parked jobs out")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    showing = commands.add_parser(
        "show",
        help="one job in full: claim, attempts, every task's state, why it was parked",
        description="Show the job whose job uuid or request id is JOB_OR_REQUEST_ID.",
    )
    showing.add_argument(
        "key", metavar="JOB_OR_REQUEST_ID", help="the job's uuid, or the request id of its cast"
    )
    showing.add_argument("--json", action="store_true", help="print JSON")
    for sub in (listing, showing):
        sub.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="seconds to wait for the board (default: [jobboard] connect_timeout)",
        )
        sub.set_defaults(func=jobs)


def _conf(args: argparse.Namespace) -> Any:
    conf = args.conf()
    if args.timeout is not None:
        conf.set_override("connect_timeout", args.timeout, "jobboard")
    return conf


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def jobs(args: argparse.Namespace) -> int:
    """Run ``keramos jobs list`` or ``keramos jobs show``."""
    from keramos.framework.jobboard import inspect

    conf = _conf(args)
    if not conf.jobboard.enabled:
        print("keramos jobs: note: [jobboard] enabled is false in this configuration",
              file=sys.stderr)
    if args.jobs_command == "show":
        view = inspect.find_job(conf, args.key)
        if view is None:
            print(f"keramos jobs: no job or cast {args.key}", file=sys.stderr)
            return 1
        if args.json:
            print_json(view.to_dict())
        else:
            _print_view(view)
        return 0
    views = inspect.list_jobs(conf, parked=not args.no_parked)
    if args.json:
        print_json([view.to_dict() for view in views])
        return 0
    header = ("REQUEST_ID", "EVENT", "STATE", "OWNER", "CLAIM_AGE", "ATTEMPTS", "LAST_COMPLETED")
    rows = [header] + [
        (
            view.request_id,
            view.event,
            view.state,
            view.owner or "-",
            _age(view.claim_age),
            str(len(view.attempts)),
            view.last_completed or "-",
        )
        for view in views
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not views:
        print("(no jobs)")
    return 0


def _print_view(view: Any) -> None:
    fields = [
        ("request_id", view.request_id),
        ("event", view.event),
        ("state", view.state),
        ("job", view.job_uuid or "-"),
        ("owner", view.owner or "-"),
        ("claim age", _age(view.claim_age)),
        ("created at", view.created_at.isoformat() if view.created_at else "-"),
        ("flow state", view.flow_state or "-"),
        ("last completed", view.last_completed or "-"),
    ]
    if view.message:
        fields.append(("message", view.message))
    for name, value in fields:
        print(f"{name + ':':16}{value}")
    print(f"{'attempts:':16}{len(view.attempts)}")
    for number, attempt in enumerate(view.attempts, 1):
        print(f"  {number}. {attempt.get('owner', '?')} at {attempt.get('claimed_at', '?')}")
    print("tasks:")
    for name, state in view.tasks:
        print(f"  {name:30} {state}")
