"""Choosing thresholds from labelled images: the maths (``maths``: curves, suggestions, intervals), the
labelled sets people bring (``labelsets``, the entry points, over ``manifests``, ``folders``, ``archives``,
``bundled`` and ``confined`` reads) and the cache of their scores (``scorecache``)."""
