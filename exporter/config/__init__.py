"""The configuration: the frozen runtime model everything after start-up reads, and how a file becomes it.

- :mod:`exporter.config.model`: the runtime model (frozen dataclasses), re-exported here;
- :mod:`exporter.config.load`: file and flags in, one line per problem out, the model built
  (schema, error messages, ``${VAR}`` interpolation, cross-field checks);
- :mod:`exporter.config.yamlfile`: the bounded, strict YAML reader both config files use.
"""

from exporter.config.model import *  # noqa: F403 - the package is the model's public face
from exporter.config.model import __all__ as __all__
