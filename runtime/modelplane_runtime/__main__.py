from modelplane_runtime.cli import main

raise SystemExit(main())
