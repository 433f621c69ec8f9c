"""Choosing thresholds from labelled images: the maths (``maths``: curves, suggestions, intervals), the
labelled sets people bring (``labelsets``) and the cache of their scores (``scorecache``)."""
