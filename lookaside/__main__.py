from lookaside.cli import main

raise SystemExit(main())
