"""Keramos configuration: oslo.config options in named groups, and how a process builds its own.

Every process (worker, CLI, test) builds a private :class:`oslo_config.cfg.ConfigOpts` with
:func:`make_conf` and passes it to what it constructs; nothing reads a global ``CONF``.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from oslo_messaging import opts as messaging_opts

from keramos.framework.agent_protocol.heartbeat import MAX_HEARTBEAT_BYTES

PROJECT = "keramos"

_default_state_path = os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"),
    PROJECT,
)

default_opts = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name of this host: the owner recorded on the flows a worker runs, so that a "
        "restarted worker resumes its own unfinished flows.",
    ),
    cfg.StrOpt(
        "state_path",
        default=_default_state_path,
        sample_default="$XDG_STATE_HOME/keramos",
        help="Directory where Keramos keeps its SQLite databases and driver files.",
    ),
]

worker_opts = [
    cfg.StrOpt("topic", default="keramos-worker", help="RPC topic the worker consumes casts from."),
    cfg.IntOpt(
        "workers",
        default=1,
        min=1,
        help="Worker processes to start; each consumes from the same topic.",
    ),
    cfg.IntOpt(
        "executor_threads",
        default=16,
        min=1,
        help="Threads per worker process that run flows: how many flows one process runs at once.",
    ),
    cfg.StrOpt(
        "intake",
        default="auto",
        choices=[
            ("auto", "kombu on RabbitMQ (rabbit:// transport URLs), rpc on any other transport"),
            (
                "kombu",
                "consume the topic queue with kombu and acknowledge a cast to RabbitMQ only once "
                "it is durably recorded (or refused): a worker killed at any moment loses no cast; "
                "RabbitMQ only",
            ),
            (
                "rpc",
                "an oslo.messaging RPC server, which acknowledges a cast before the worker records "
                "it: a worker killed in between loses that cast (the fake:// transport of the "
                "demo and the testing kit)",
            ),
        ],
        help="How the worker takes casts off the queue. Calls (status, ping) are always served "
        "by an oslo.messaging RPC server on the control topic '<topic>-control'.",
    ),
    cfg.IntOpt(
        "accept_threads",
        default=4,
        min=1,
        help="Threads per worker process that take casts off the queue, validate them and record "
        "them as pending before handing them to the flow threads. The kombu intake holds at "
        "most twice as many unacknowledged casts (its prefetch).",
    ),
    cfg.IntOpt(
        "max_queued_flows",
        default=1000,
        min=1,
        help="Accepted flows that may wait for a flow thread; beyond this, accepting the next "
        "cast waits until a flow ends.",
    ),
    cfg.StrOpt(
        "engine",
        default="serial",
        choices=[
            ("serial", "run the tasks of a flow one after another in the calling thread"),
            ("parallel", "run independent tasks of a flow at once on a shared thread pool"),
        ],
        help="taskflow engine that runs flows.",
    ),
    cfg.IntOpt(
        "max_parallel_tasks",
        default=8,
        min=1,
        help="Size of the thread pool shared by all flows when engine = parallel.",
    ),
    cfg.IntOpt(
        "graceful_shutdown_timeout",
        default=60,
        min=0,
        help="Seconds a worker given SIGTERM waits for running flows to finish; flows still "
        "running then are left in the persistence backend and resumed by the next start.",
    ),
    cfg.IntOpt(
        "max_payload_bytes",
        default=1048576,
        min=1024,
        help="Largest payload a cast may carry: the size in bytes of its canonical JSON (UTF-8, "
        "sorted keys, no spaces). A larger payload is refused before any task runs and recorded "
        "as a failure.",
    ),
    cfg.BoolOpt(
        "resume_on_start",
        default=True,
        help="Resume, at start-up, the unfinished flows this host owned when it stopped.",
    ),
]

drivers_opts = [
    cfg.StrOpt("state_store", default="sqlalchemy", help="Entry point in keramos.state_store."),
    cfg.StrOpt("compute", default="noop", help="Entry point in keramos.compute."),
    cfg.StrOpt("network", default="noop", help="Entry point in keramos.network."),
    cfg.StrOpt("cert_generator", default="noop", help="Entry point in keramos.cert_generator."),
    cfg.StrOpt("cert_manager", default="noop", help="Entry point in keramos.cert_manager."),
    cfg.StrOpt("key_manager", default="noop", help="Entry point in keramos.key_manager."),
    cfg.StrOpt("image_store", default="noop", help="Entry point in keramos.image_store."),
    cfg.StrOpt("amphora", default="noop", help="Entry point in keramos.amphora."),
    cfg.ListOpt(
        "flows",
        default=[],
        help="Entry points in keramos.flows this worker serves; empty means every installed one.",
    ),
]

state_store_opts = [
    cfg.StrOpt(
        "connection",
        default="sqlite:///$state_path/keramos.sqlite",
        secret=True,
        help="SQLAlchemy URL of the state store database (SQLite, PostgreSQL, MySQL).",
    ),
]

persistence_opts = [
    cfg.BoolOpt(
        "enabled",
        default=True,
        help="Record every flow's progress durably, so that a flow interrupted by a crash "
        "resumes from its last completed task.",
    ),
    cfg.StrOpt(
        "connection",
        default="sqlite:///$state_path/flows.sqlite",
        secret=True,
        help="SQLAlchemy URL of the flow persistence database.",
    ),
    cfg.StrOpt(
        "synchronous",
        default="normal",
        choices=[
            (
                "normal",
                "SQLite WAL with synchronous=NORMAL, PostgreSQL synchronous_commit=off: survives a "
                "crash of the worker; a power loss or a crash of the database server may lose the "
                "last fraction of a second of progress (a flow then resumes from an earlier task)",
            ),
            (
                "full",
                "SQLite synchronous=FULL, PostgreSQL's own synchronous_commit: survives a power "
                "loss too, at some speed",
            ),
        ],
        help="Durability of flow progress writes on SQLite and PostgreSQL (other databases keep "
        "their own settings). The state store is not affected.",
    ),
    cfg.BoolOpt(
        "keep_completed",
        default=False,
        help="Keep the progress records of flows that finished (for auditing); by default they "
        "are deleted once the outcome is in the state store.",
    ),
]

amphora_opts = [
    cfg.FloatOpt(
        "active_timeout",
        default=300.0,
        min=0,
        help="Seconds to wait for the compute driver to report a new amphora ACTIVE.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.5,
        min=0.01,
        help="First interval between status polls; it doubles up to 5 seconds.",
    ),
    cfg.FloatOpt(
        "agent_timeout",
        default=120.0,
        min=0,
        help="Seconds to wait for a new amphora's agent to answer over mutual TLS.",
    ),
    cfg.ListOpt(
        "controller_heartbeat_endpoints",
        default=[],
        help="host:port of every health manager ([health] bind_host/bind_port) written into each "
        "new amphora's agent configuration, with [health] heartbeat_key: the agent sends its "
        "signed UDP heartbeats there. Empty: amphorae send no heartbeats and the health manager "
        "cannot fail them over.",
    ),
    cfg.FloatOpt(
        "heartbeat_interval",
        default=10.0,
        min=0.05,
        help="Seconds between two heartbeats of a new amphora; keep it well below "
        "[health] heartbeat_timeout.",
    ),
    cfg.BoolOpt(
        "require_signed_images",
        default=True,
        help="Refuse to boot an amphora from an image that carries no signature properties. "
        "Signed images are always verified (certificate and signature) before anything boots; "
        "set False only for development and tests with unsigned images.",
    ),
    cfg.StrOpt(
        "certificate_mode",
        default="controller",
        choices=[
            (
                "controller",
                "the controller issues the amphora's server certificate and key and hands both "
                "over in the config drive",
            ),
            (
                "csr",
                "the amphora's agent makes its own key, which never leaves the amphora; after the "
                "boot the controller fetches its CSR over mutual TLS, checks the activation token "
                "and that the CSR is for the key the agent proved, signs it with the server CA "
                "and installs the certificate",
            ),
        ],
        help="Who makes an amphora's server key: the controller, or the amphora itself (csr).",
    ),
]

health_opts = [
    cfg.StrOpt(
        "heartbeat_key",
        secret=True,
        help="Shared key signing amphora heartbeats (HMAC-SHA256): the health manager checks "
        "them with it, and the lifecycle flows hand it to each new amphora's agent in its config "
        "drive. Required by keramos-health and for [amphora] controller_heartbeat_endpoints.",
    ),
    cfg.StrOpt("bind_host", default="0.0.0.0", help="Address the UDP heartbeat listener binds."),
    cfg.PortOpt(
        "bind_port",
        default=5555,
        help="UDP port of the heartbeat listener; agents list it in [amphora_agent] "
        "controller_heartbeat_endpoints.",
    ),
    cfg.FloatOpt(
        "heartbeat_timeout",
        default=60.0,
        min=0.1,
        help="Seconds without a heartbeat after which a READY amphora is failed over.",
    ),
    cfg.FloatOpt(
        "check_interval",
        default=10.0,
        min=0.05,
        help="Seconds between two checks for silent amphorae and lagging configurations.",
    ),
    cfg.StrOpt(
        "failover_threshold",
        default="0.5",
        help="Most silent amphorae failed over at once: a count ('3') or a fraction of the READY "
        "amphorae ('0.5' or '50%', at least one). When more are silent, none is failed over "
        "and an error is logged: so many at once is a network partition, not amphora failure.",
    ),
    cfg.FloatOpt(
        "replay_window",
        default=30.0,
        min=1.0,
        help="Seconds a heartbeat's sent_at may be away from this host's clock; older (or later) "
        "heartbeats are refused as replays. Keep the clocks synchronised (NTP).",
    ),
    cfg.IntOpt(
        "max_heartbeat_bytes",
        default=MAX_HEARTBEAT_BYTES,
        min=512,
        max=65507,
        help="Largest heartbeat datagram accepted, in bytes; larger ones are refused.",
    ),
    cfg.FloatOpt(
        "convergence_grace",
        default=5.0,
        min=0,
        help="Seconds after a load balancer's configuration was recorded during which heartbeats "
        "reporting an older version are ignored (they may have left before the push landed).",
    ),
]

jobboard_opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Jobboard mode: an accepted cast becomes a job on a shared taskflow jobboard, and a "
        "conductor in every worker process claims jobs and runs them, so that any worker "
        "finishes any flow (also one whose host died). Needs [persistence] and [state_store] "
        "on a database every worker reaches (PostgreSQL or MySQL) when workers run on more "
        "than one host.",
    ),
    cfg.StrOpt(
        "backend",
        default="redis",
        choices=[
            ("redis", "taskflow's Redis jobboard; claims expire unless their holder renews them"),
            ("zookeeper", "taskflow's ZooKeeper jobboard (needs kazoo); claims are ephemeral "
             "nodes that vanish with their holder's session"),
            ("etcd", "taskflow's etcd jobboard (needs etcd3gw); claims hold a lease"),
        ],
        help="Jobboard backend.",
    ),
    cfg.StrOpt(
        "url",
        default="redis://127.0.0.1:6379/0",
        secret=True,
        help="Where the board lives: redis://[[user]:password@]host:port[/db] (rediss:// for "
        "TLS), zookeeper://host:port[,host:port...], etcd://host:port.",
    ),
    cfg.StrOpt(
        "name",
        default="keramos",
        help="Name of the board: the Redis key namespace, the ZooKeeper path /NAME, the etcd "
        "root /NAME. Workers, intakes and the CLI of one deployment use the same name.",
    ),
    cfg.FloatOpt(
        "claim_timeout",
        default=30.0,
        min=1.0,
        help="Seconds a claim outlives its holder (Redis and etcd): a conductor renews its "
        "claims every third of this; when its process dies, another claims the job this long "
        "after the last renewal and resumes the flow from its last completed task.",
    ),
    cfg.IntOpt(
        "max_attempts",
        default=3,
        min=1,
        help="Claims of one job that may end without an outcome (the worker died, or the job "
        "could not be loaded) before the job is parked: recorded as failed (JobParked, naming "
        "the attempts) and taken off the board, so that a poison cast cannot kill worker after "
        "worker.",
    ),
    cfg.IntOpt(
        "conductor_threads",
        default=8,
        min=1,
        help="Jobs one worker process's conductor runs at once.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.5,
        min=0.01,
        help="Seconds an idle conductor waits before looking at the board again (the Redis "
        "board is polled).",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=5.0,
        min=0.1,
        help="Seconds to wait for the board: connecting, posting a job (then the cast is not "
        "acknowledged), the health check and keramos jobs.",
    ),
    cfg.FloatOpt(
        "max_backoff",
        default=10.0,
        min=0.1,
        help="Longest wait between two attempts of a conductor to reach a board that is down.",
    ),
]

metrics_opts = [
    cfg.StrOpt(
        "bind",
        default="",
        sample_default="127.0.0.1:9464",
        help="host:port where keramos-worker and keramos-health serve Prometheus metrics at "
        "/metrics; empty (the default) serves none. A worker of several processes serves one "
        "endpoint for all of them (see doc/observability.md). The worker and the health manager "
        "on one host need different values: give each its own config file.",
    ),
]

tracing_opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Export OpenTelemetry spans of every cast, flow, task and agent request over OTLP. "
        "Needs the tracing extra: pip install 'keramos[tracing]'.",
    ),
    cfg.StrOpt(
        "otlp_endpoint",
        default="",
        sample_default="http://127.0.0.1:4318/v1/traces",
        help="URL of the OTLP/HTTP traces endpoint of a collector; empty means the exporter's "
        "own default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces).",
    ),
    cfg.StrOpt(
        "service_name",
        default="",
        help="The service.name resource attribute of the spans this process exports; empty "
        "means the program's name (keramos-worker, keramos-health).",
    ),
]

GROUPS: dict[str | None, list[cfg.Opt]] = {
    None: default_opts,
    "worker": worker_opts,
    "drivers": drivers_opts,
    "state_store": state_store_opts,
    "persistence": persistence_opts,
    "amphora": amphora_opts,
    "health": health_opts,
    "jobboard": jobboard_opts,
    "metrics": metrics_opts,
    "tracing": tracing_opts,
}


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """The ``oslo.config.opts`` entry point: every Keramos option, for the sample config."""
    return [(group, list(opts)) for group, opts in GROUPS.items()]


#: The defaults Keramos gives options oslo.messaging registers, group -> option -> value:
#: set on every configuration :func:`make_conf` builds and shown in the sample config
#: (:func:`list_messaging_opts`), so that the sample documents what a process really does.
MESSAGING_DEFAULTS: dict[str | None, dict[str, Any]] = {
    None: {"control_exchange": PROJECT},
    # Casts outlive a RabbitMQ restart: durable, replicated queues, persistent messages.
    "oslo_messaging_rabbit": {"rabbit_quorum_queue": True},
    "oslo_messaging_notifications": {
        "driver": ["messagingv2"],
        "topics": ["keramos_notifications"],
    },
}


#: The sample-config namespace of :func:`list_messaging_opts` (an ``oslo.config.opts`` entry point).
MESSAGING_NAMESPACE = f"{PROJECT}.messaging"


def list_messaging_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """The ``keramos.messaging`` sample-config namespace: oslo.messaging's options with
    :data:`MESSAGING_DEFAULTS` (oslo.messaging's own namespace would show its defaults, such
    as ``rabbit_quorum_queue = false``, which no Keramos process uses).

    oslo.messaging hands out copies of its options, so setting their defaults here changes
    nothing a running process sees."""
    listed = messaging_opts.list_opts()
    for group, opts in listed:
        cfg.set_defaults(opts, **MESSAGING_DEFAULTS.get(group, {}))
    return listed


#: Options oslo.messaging reads on every call but registers on the global CONF only, and leaves
#: out of its list_opts(): (module, attribute, group), as its own ConfFixture registers them.
_GLOBAL_ONLY_MESSAGING_OPTS = (
    ("oslo_messaging._tracing.client", "oslo_messaging_tracing", "oslo_messaging_tracing"),
    ("oslo_messaging._metrics.client", "oslo_messaging_metrics", "oslo_messaging_metrics"),
)


def _register_messaging_opts(conf: cfg.ConfigOpts) -> None:
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    for module_name, attribute, group in _GLOBAL_ONLY_MESSAGING_OPTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        conf.register_opts(getattr(module, attribute, []), group=group)


def _register_plugin_opts(conf: cfg.ConfigOpts) -> None:
    """Register the options of every installed Keramos plugin (``oslo.config.opts`` entry
    points named ``keramos.*``), so that overrides may set them before a driver loads.

    Only done when an override names a group not yet registered: values from files need no
    registration up front (oslo.config reads them when the driver registers its options), and
    importing every plugin costs a worker memory it may not need. The oslo.messaging options
    of :data:`MESSAGING_NAMESPACE` are registered already, by :func:`make_conf` itself."""
    for entry_point in metadata.entry_points(group="oslo.config.opts"):
        if not entry_point.name.startswith(f"{PROJECT}.") or entry_point.name == MESSAGING_NAMESPACE:
            continue
        for group, opts in entry_point.load()():
            conf.register_opts(opts, group=group)


def _registered(conf: cfg.ConfigOpts, group: str, name: str) -> bool:
    if group == "DEFAULT":
        return name in conf
    return group in conf and name in conf[group]


class KeramosConf(cfg.ConfigOpts):
    """A process's configuration: oslo.config's, with overrides that wait for their options.

    A plugin's driver usually registers its options when it is built, after :func:`make_conf`
    has parsed the files and applied ``overrides`` (the testing kit's ``conf_overrides``, the
    demo's). An override naming an option nobody registered yet is kept here and applied the
    moment the option is registered, so a plugin needs no ``oslo.config.opts`` entry point for
    its options to be set. :func:`unclaimed_overrides` tells which never found their option.
    """

    def __init__(self) -> None:
        #: ``(group, name) -> value`` of the overrides whose option is not registered yet (set
        #: first: oslo.config registers options of its own as it is built).
        self.pending_overrides: dict[tuple[str, str], Any] = {}
        super().__init__()

    def register_opt(self, opt: cfg.Opt, group: Any = None, cli: bool = False, **kwargs: Any) -> bool:
        """Register ``opt`` as oslo.config does, then apply the override waiting for it."""
        registered = super().register_opt(opt, group, cli, **kwargs)
        group_name = "DEFAULT" if group is None else getattr(group, "name", group)
        key = (group_name, opt.dest)
        if key in self.pending_overrides:
            self.set_override(opt.dest, self.pending_overrides.pop(key), group=group)
        return registered


def unclaimed_overrides(conf: cfg.ConfigOpts) -> list[str]:
    """``[group] name`` of each override whose option no loaded code registered: a typo, or a
    plugin that registers its options later than its driver's construction."""
    pending = getattr(conf, "pending_overrides", {})
    return [f"[{group}] {name}" for group, name in sorted(pending)]


def check_overrides_claimed(conf: cfg.ConfigOpts) -> None:
    """Refuse overrides that no option took, once every driver is built.

    :raises ConfigError: naming each override and where its option must come from.
    """
    from keramos.framework.errors import ConfigError

    unclaimed = unclaimed_overrides(conf)
    if unclaimed:
        raise ConfigError(
            f"no loaded driver or flow registers {', '.join(unclaimed)}: register the option "
            "with conf.register_opts() in the driver's __init__ (or in an oslo.config.opts "
            "entry point named 'keramos.<your plugin>'), and check its group and name"
        )


def make_conf(
    args: Sequence[str] = (),
    *,
    config_files: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> cfg.ConfigOpts:
    """Build and parse a private configuration.

    ``args`` are oslo.config command-line arguments (``--config-file``, ``--config-dir``).
    ``config_files`` replaces the default search (``/etc/keramos/keramos.conf`` and friends).
    ``overrides`` maps group (``"DEFAULT"`` for the default group) to option values set on top
    of the files, which is how the demo and the testing kit configure a worker. An override of
    an option not registered yet waits for it (see :class:`KeramosConf`).
    """
    conf = KeramosConf()
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=group)
    _register_messaging_opts(conf)
    logging.register_options(conf)
    for group, defaults in MESSAGING_DEFAULTS.items():
        for name, value in defaults.items():
            conf.set_default(name, value, group=group)
    default_files = (
        list(config_files) if config_files is not None else cfg.find_config_files(project=PROJECT)
    )
    conf(list(args), project=PROJECT, default_config_files=default_files)
    if any(
        not _registered(conf, group, name)
        for group, values in (overrides or {}).items()
        for name in values
    ):
        _register_plugin_opts(conf)
    for group, values in (overrides or {}).items():
        for name, value in values.items():
            if _registered(conf, group, name):
                conf.set_override(name, value, group=None if group == "DEFAULT" else group)
            else:
                conf.pending_overrides[(group, name)] = value
    check_values(conf)
    return conf


def check_values(conf: cfg.ConfigOpts) -> None:
    """Read every registered option once, so that a bad value stops a process as it starts.

    oslo.config checks a value (its type, choices, bounds) only when it is read, which may be
    when a flow first needs it, long after start-up. Raises
    :class:`oslo_config.cfg.ConfigFileValueError` naming the group, the option and what is
    wrong, on one line. Options a plugin registers when it loads are checked by calling this
    again after loading (the worker does).
    """
    for name in list(conf):
        try:
            value = conf[name]
        except ValueError as error:
            raise _invalid("DEFAULT", name, error) from None
        if not isinstance(value, cfg.ConfigOpts.GroupAttr):
            continue
        for option in list(value):
            try:
                value[option]
            except ValueError as error:
                raise _invalid(name, option, error) from None


def _invalid(group: str, name: str, error: ValueError) -> cfg.ConfigFileValueError:
    reason = str(error).rsplit(" is not valid: ", 1)[-1]
    return cfg.ConfigFileValueError(f"[{group}] {name}: {reason}")
