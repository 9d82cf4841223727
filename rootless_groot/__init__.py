"""rootless-groot: a rootless container image manager with GrootFS's CLI contract."""

__version__ = "0.1.0"
