"""``python -m geoguide``: the same command line as the ``geoguide`` script."""

from geoguide.app.cli import entry

if __name__ == "__main__":
    entry()
