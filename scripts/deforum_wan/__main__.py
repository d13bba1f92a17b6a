# The worker's isolation goes in before anything else is imported (see isolation.py).
from deforum_wan.service.isolation import install_from_environment

install_from_environment()

from deforum_wan.cli import main  # noqa: E402

raise SystemExit(main())
