"""``python -m nsfw_core``: see :mod:`nsfw_core.cli`."""

import sys

from .cli import main

sys.exit(main())
