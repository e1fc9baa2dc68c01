"""``python -m exporter``: the same as the ``ehpc-image-exporter`` console script."""

from exporter.cli import main

raise SystemExit(main())
