from cwm.cli import main

raise SystemExit(main())
