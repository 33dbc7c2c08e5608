"""The amphora agent: an HTTPS-only REST API (mutual TLS) that runs HAProxy for load balancers.

Layout, after seed 004's split between a core and the API that serves it:

- :mod:`.haproxy`: the core. Versioned configurations on disk, ``haproxy -c`` validation and the
  HAProxy processes; knows nothing of HTTP.
- :mod:`.server`: the Flask application (``create_app``) exposing the core under ``/1.0``,
  compatible in paths and semantics with Octavia's amphora agent where they overlap.
- :mod:`.options`: the ``[amphora_agent]`` options and the settings the application runs with.
- :mod:`.main`: the ``keramos-agent`` console script (gunicorn, TLS, client certificate required).
"""
