"""Pixels in, scores out: the converted model files (``modelfiles``), the runtimes (``runtime``, ``litert``,
``tfgraph``), the :class:`~nsfw_core.inference.model.Model` type (``model``), the micro-batcher (``batcher``),
the steps every front end shares (``pipeline``) and the process's one model registry (``registry``)."""
