"""The shells over the agent: the ``geoguide`` command line, the terminal chat, the web server and
the demo. Nothing imports this package; it imports the layers below (``agent``, ``eval``,
``indices``, ``tools``, ``prompts``)."""
