from ddpipe.cli import main

raise SystemExit(main())
