from seqsetvae.cli import main

raise SystemExit(main())
