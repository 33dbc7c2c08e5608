"""What the amphora agent and the controller say to each other: the REST API's paths, headers
and identifiers (``rest``) and the signed UDP heartbeat (``heartbeat``).

The agent program and the controller's drivers and health manager share these definitions, so
neither side can drift from the other.
"""
