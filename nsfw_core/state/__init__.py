"""What the service remembers, in the one database: the connection layer and its backends (``db``), the
schema's migrations (``migrations``), the database's errors (``errors``), the review queue (``review``),
the thresholds history (``thresholds``), remembered decisions and hash lists (``known``, ``remembered``,
``hashindex``) and the webhooks' outbox and delivery (``webhooks``)."""
