"""``keramos amphora``: what the state store records of the amphorae, for operators.

``list`` shows one line per amphora (status, where its agent answers, its server certificate,
how long ago its last heartbeat arrived); ``show`` prints one record as JSON. Both read the
configured state store directly, as the health manager does; no worker needs to run.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from keramos.framework.cli.progress import print_json, print_table, shorten
from keramos.framework.records import AmphoraStatus

if TYPE_CHECKING:
    from keramos.framework.records import AmphoraRecord

#: The statuses ``list --status`` accepts, in lifecycle order.
STATUSES = tuple(value for name, value in vars(AmphoraStatus).items() if name.isupper())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "amphora",
        help="list and show the amphorae the state store records",
        description="List and show amphorae as the state store records them. To act on one, cast "
        "its flow: 'keramos cast failover_amphora --payload {\"amphora_id\": ...} --wait'.",
    )
    commands = parser.add_subparsers(dest="amphora_command", metavar="COMMAND", required=True)
    listing = commands.add_parser(
        "list",
        help="one line per amphora, oldest first",
        description="One line per amphora, oldest first: status, agent address, server "
        "certificate serial, seconds since its last heartbeat ('-' if none arrived) and, for an "
        "amphora in ERROR, why.",
    )
    listing.add_argument(
        "--status",
        type=str.upper,
        choices=STATUSES,
        metavar="STATUS",
        help=f"only amphorae in this status, one of {', '.join(STATUSES)} (any case)",
    )
    listing.add_argument(
        "--all", action="store_true", help="include DELETED amphorae (left out by default)"
    )
    listing.set_defaults(func=_list)
    show = commands.add_parser(
        "show",
        help="one amphora's record, as JSON",
        description="Print the state store's record of AMPHORA_ID as JSON; exit 1 if there is "
        "none. The activation token itself is never shown, only whether it is still unused.",
    )
    show.add_argument("amphora_id", metavar="AMPHORA_ID", help="the amphora's id")
    show.set_defaults(func=_show)


def _heartbeat_age(record: AmphoraRecord) -> str:
    from keramos.framework.records import utcnow

    if record.last_heartbeat_at is None:
        return "-"
    return f"{(utcnow() - record.last_heartbeat_at).total_seconds():.0f}s"


def _list(args: argparse.Namespace) -> int:
    from keramos.framework.loader import load_state_store
    from keramos.framework.records import AmphoraRecord

    state_store = load_state_store(args.conf())
    try:
        filters = {"status": args.status} if args.status else {}
        records = state_store.find(AmphoraRecord, **filters)
    finally:
        state_store.close()
    if not (args.all or args.status):
        records = [r for r in records if r.status != AmphoraStatus.DELETED]
    if not records:
        print("no amphorae recorded")
        return 0
    header = ("AMPHORA", "STATUS", "AGENT", "CERTIFICATE", "HEARTBEAT", "ERROR")
    rows = [
        (
            r.amphora_id,
            r.status,
            _route(r),
            r.cert_serial or "-",
            _heartbeat_age(r),
            shorten(r.error or "", 60),
        )
        for r in records
    ]
    print_table(header, rows)
    return 0


def _route(record: AmphoraRecord) -> str:
    """Where the agent answers: ``address:port``, and for an amphora behind a proxy the network
    the address belongs to and the proxy that reaches it."""
    if not record.address:
        return "-"
    where = record.address if record.agent_port is None else f"{record.address}:{record.agent_port}"
    if record.proxy:
        return f"{where} in {record.network_id} via {record.proxy}"
    return where


def _show(args: argparse.Namespace) -> int:
    from keramos.framework.loader import load_state_store
    from keramos.framework.records import AmphoraRecord

    state_store = load_state_store(args.conf())
    try:
        record = state_store.get(AmphoraRecord, args.amphora_id)
    finally:
        state_store.close()
    if record is None:
        print(f"keramos amphora: no amphora {args.amphora_id}", file=sys.stderr)
        return 1
    document = record.to_dict()
    document["activation_token_unused"] = document.pop("activation_token_hash") is not None
    document["route"] = "direct" if not record.proxy else _route(record)
    print_json(document)
    return 0
