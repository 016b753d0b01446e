from sci_monitor.cli import main

raise SystemExit(main())
