from awm.cli import main

raise SystemExit(main())
