"""``nsfw-scan``: rescanning a stored catalogue on Ray Data, resumable, re-judged without re-inference (issue 28).

A scan lists the catalogue's images (local folders, manifests, URL lists, object stores), scores each one
once per model version on a pool of Ray actors that each hold one model, and writes a Parquet dataset:
per image its source, sha256, size, model and version, the five scores, the verdict under the thresholds in
force (with their version and ``verdict_source``), or an error code.  ``nsfw-scan reverdict`` judges the
stored scores again under other thresholds or hash lists, without the model.

Modules, one concept each (only :mod:`.engine` imports Ray, and nothing outside this package imports it):

- :mod:`.schema`: the dataset's columns, and which error codes are final for the same bytes;
- :mod:`.sources`: what a command line names -> the listing of images; reading one image's bytes under the byte cap;
- :mod:`.keys`: resume keys (source, sha256) and the set of images already scored;
- :mod:`.dataset`: the dataset on a filesystem: atomic part files, the latest row per image, the lock;
- :mod:`.worker`: the per-actor work: read, hash, skip what is done, decode under the service's limits, score;
- :mod:`.judge`: scores -> verdicts, vectorised, with the service's rules (known images, animations);
- :mod:`.queueing`: which rows go to the review queue (unknown, and an audit share), at most once per image;
- :mod:`.engine`: Ray: connecting (embedded or a cluster) and the streaming pipeline the driver consumes;
- :mod:`.reverdict`: new verdicts for stored scores, and what changed;
- :mod:`.summary`: counts, errors, time, images per second;
- :mod:`.cli`: the ``nsfw-scan`` command.
"""
