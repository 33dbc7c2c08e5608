"""What the agent reports about its host in ``/details``: cpu, memory, load, network counters.

Read from ``/proc``; a file that cannot be read gives an empty answer rather than an error, so
that ``/details`` always answers.
"""

from __future__ import annotations

import os

_MEMINFO_KEYS = {
    "MemTotal": "total",
    "MemFree": "free",
    "MemAvailable": "available",
    "Buffers": "buffers",
    "Cached": "cached",
    "SwapCached": "swap_used",
    "Shmem": "shared",
    "Slab": "slab",
}


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read().splitlines()
    except OSError:
        return []


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """Memory in kB under Octavia's names (``total``, ``free``, ``buffers``, ``cached``,
    ``swap_used``, ``shared``, ``slab``) and ``available``."""
    memory: dict[str, int] = {}
    for line in _lines(path):
        name, _, value = line.partition(":")
        if name in _MEMINFO_KEYS and value.split():
            memory[_MEMINFO_KEYS[name]] = int(value.split()[0])
    return memory


def cpu_times(path: str = "/proc/stat") -> dict[str, int]:
    """Cumulative cpu time in clock ticks since boot: ``total``, ``user``, ``system``,
    ``soft_irq`` (Octavia's keys)."""
    for line in _lines(path):
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(value) for value in fields[1:]]
            values += [0] * (7 - len(values))
            return {
                "total": sum(values),
                "user": values[0],
                "system": values[2],
                "soft_irq": values[6],
            }
    return {}


def load() -> list[str]:
    """The 1, 5 and 15 minute load averages, as strings like Octavia's agent reports them."""
    return [f"{value:.2f}" for value in os.getloadavg()]


def network_counters(path: str = "/proc/net/dev") -> dict[str, dict[str, int]]:
    """Bytes sent and received per interface but loopback: ``{name: {network_tx, network_rx}}``."""
    networks: dict[str, dict[str, int]] = {}
    for line in _lines(path)[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        name = name.strip()
        if name and name != "lo" and len(fields) >= 9:
            networks[name] = {"network_tx": int(fields[8]), "network_rx": int(fields[0])}
    return networks
