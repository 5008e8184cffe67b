"""`python -m helixrt` runs the `helixrt` command."""

from helixrt.cli import main

raise SystemExit(main())
