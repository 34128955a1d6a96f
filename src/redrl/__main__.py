from redrl.cli import main

raise SystemExit(main())
