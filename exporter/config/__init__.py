"""The configuration: the frozen runtime model everything after start-up reads, and how a file becomes it.

- :mod:`exporter.config.model`: the runtime model (frozen dataclasses), re-exported here; each key declared
  once, with its bounds, and validated from the file directly;
- :mod:`exporter.config.schema`: the kinds of value a field may hold (bounds and validators);
- :mod:`exporter.config.rules` and :mod:`exporter.config.forms`: the rules over the whole file, and the
  shapes the file writes a target's parts in;
- :mod:`exporter.config.load`: file and flags in, one line per problem out (with
  :mod:`exporter.config.interpolate` for ``${VAR}`` and :mod:`exporter.config.errors` for the lines);
- :mod:`exporter.config.yamlfile`: the bounded, strict YAML reader both config files use.
"""

from exporter.config.model import *  # noqa: F403 - the package is the model's public face
from exporter.config.model import __all__ as __all__
