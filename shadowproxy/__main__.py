from shadowproxy.cli import main

raise SystemExit(main())
