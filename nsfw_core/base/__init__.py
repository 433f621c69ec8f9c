"""The ground floor, which every other floor may use: the settings table (``settings``), the error tree
(``errors``), labels and verdicts (``labels``), the three-state rule (``verdict``), rates (``rates``),
atomic files (``files``), logs and request ids (``logs``, ``requestid``), the background refresher
(``refresher``), and the machine the process runs on (``platform``, ``cpus``, ``memory``, ``arenas``)."""
