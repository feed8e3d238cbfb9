from ims_station.cli import main

raise SystemExit(main())
