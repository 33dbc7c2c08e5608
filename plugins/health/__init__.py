"""Amphora health: signed UDP heartbeats from the agents and the ``keramos-health`` manager.

- :mod:`.heartbeat`: the wire format (HMAC-SHA256 signed JSON) and the receiver's checks (size,
  signature, replay window). The agent's sender (:mod:`keramos.plugins.agent.heartbeat_sender`)
  uses it too.
- :mod:`.checks`: the decisions (who is silent, when silence looks like a network partition,
  which load balancers lag behind) as plain classes on a given clock, casting through a given
  ``cast``.
- :mod:`.manager`: the ``[health]`` options and the thin UDP and timer edge of the
  ``keramos-health`` service.
"""
