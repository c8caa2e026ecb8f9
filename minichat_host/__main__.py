from minichat_host.cli import main

raise SystemExit(main())
