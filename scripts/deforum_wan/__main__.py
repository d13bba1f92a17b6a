from deforum_wan.cli import main

raise SystemExit(main())
