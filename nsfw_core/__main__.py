"""``python -m nsfw_core``: see :mod:`nsfw_core.cli`."""

import sys

from nsfw_core.cli import main

sys.exit(main())
