"""What a piece of code imports, seen from a fresh interpreter rather than read from its source."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

__all__ = ["packages_imported"]

_PROBE = """
import sys
_before = set(sys.modules)
{code}
import json
_new = {{name.partition(".")[0] for name in set(sys.modules) - _before}}
print(json.dumps(sorted(_new - set(sys.stdlib_module_names))))
"""


def packages_imported(code: str, timeout: float = 60.0) -> list[str]:
    """The top-level packages outside the standard library that running ``code`` imports.

    Run in a fresh interpreter, so nothing this test process imported counts; what the
    interpreter loads at start-up (site, ``.pth`` files) does not count either.
    """
    probe = _PROBE.format(code=textwrap.dedent(code))
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, completed.stderr
    packages = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(packages, list)
    return [str(name) for name in packages]
