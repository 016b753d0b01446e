"""One module per `sci-monitor` command; see :mod:`sci_monitor.cli` for how to add one."""
