"""Where a local function's fresh interpreter starts: ``python -m funcpipe.platforms.local_child``.

The function's side lives in :mod:`funcpipe.platforms.local.child`; this module only names the
process, so a process list (and a test looking for function processes) shows what it is.
"""

from __future__ import annotations

from funcpipe.platforms.local.child import main

if __name__ == "__main__":
    main()
