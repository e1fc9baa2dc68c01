"""The configuration: the frozen runtime model everything after start-up reads, and how a file becomes it.

- :mod:`exporter.config.model`: the runtime model (frozen dataclasses), re-exported here; each key is
  declared once, with its bounds (:mod:`exporter.config.schema` has the kinds), and the file is validated
  straight into it;
- :mod:`exporter.config.load`: file and flags in, one line per problem out (``${VAR}`` in ``interpolate``,
  the lines in ``errors``, the whole-file rules in ``rules``);
- :mod:`exporter.config.yamlfile`: the bounded, strict YAML reader both config files use.
"""

from exporter.config.model import *  # noqa: F403 - the package is the model's public face
from exporter.config.model import __all__ as __all__
