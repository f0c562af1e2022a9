"""``python -m pipeline ...``: the entrypoint for ``ray job submit`` without an installed script."""

from pipeline.cli import main

raise SystemExit(main())
