import sys

if sys.argv[1:2] == ["fidelity"]:  # python -m bench fidelity [...]: replay timing
    from bench.fidelity import main as fidelity

    raise SystemExit(fidelity(sys.argv[2:]))

from bench.run import main

raise SystemExit(main())
