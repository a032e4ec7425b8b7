from mmlc.cli import main

raise SystemExit(main())
