"""``keramos-proxy``: reaches amphora agents on networks the controller cannot route to.

A stateless program (no database, nothing on disk) that runs near the amphorae' networks, any
number of replicas behind one address. The controller opens a mutual-TLS tunnel to it per agent
connection (HTTP CONNECT, routed by network id and address and signed with the route key); the
proxy relays bytes, so the agent's own mutual TLS runs end to end inside the tunnel. Heartbeats
an amphora sends to the proxy are relayed upstream to the health managers unchanged.
"""
