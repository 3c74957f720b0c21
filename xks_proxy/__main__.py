from xks_proxy.cli import main

raise SystemExit(main())
