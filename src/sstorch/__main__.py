from sstorch.cli import main

raise SystemExit(main())
