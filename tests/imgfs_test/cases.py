"""Named cases: an integration file is a Suite of cases that share what
its setup makes (a registry, images, a cache), so that one case can be run
alone:

    python3 tests/integration/test_errors.py                  # every case
    python3 tests/integration/test_errors.py corrupt_blob ... # these cases
    python3 tests/integration/test_errors.py --list           # their names
    meson test -C build test_errors --test-args corrupt_blob

A case is a function of one argument, the fixture: .tap, .work (a fresh
directory), whatever setup put on it, and .once(name, make) for what only
some cases need (made once, by the first case that asks).  A case that
raises fails with its traceback, and the others still run."""

import os
import sys
import traceback

from .harness import Tap, require_root_and_fuse, workspace


class Fixture:
    def __init__(self, tap, work):
        self.tap = tap
        self.work = work
        self._once = {}
        self._cleanups = []

    def once(self, name, make):
        if name not in self._once:
            self._once[name] = make()
        return self._once[name]

    def on_exit(self, fn):
        """Runs fn when the suite ends, last registered first."""
        self._cleanups.append(fn)
        return fn

    def cleanup(self):
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception:
                print(f"# cleanup {getattr(fn, '__name__', fn)} failed:", flush=True)
                for line in traceback.format_exc().splitlines():
                    print(f"# {line}", flush=True)


class Suite:
    def __init__(self, needs_root=True):
        self.needs_root = needs_root
        self._setup = None
        self.cases = []
        # Helpers of an integration file may report through suite.tap too.
        self.tap = Tap()

    def setup(self, fn):
        """fn(t) makes what every case uses; it runs before the first case."""
        self._setup = fn
        return fn

    def case(self, fn):
        self.cases.append(fn)
        return fn

    def main(self, argv=None):
        args = sys.argv[1:] if argv is None else argv
        names = [c.__name__ for c in self.cases]
        if "--list" in args:
            print("\n".join(names))
            return 0
        unknown = [a for a in args if a not in names]
        if unknown:
            print(f"unknown case(s): {', '.join(unknown)}; the cases are: {', '.join(names)}", file=sys.stderr)
            return 2
        chosen = [c for c in self.cases if not args or c.__name__ in args]
        tap = self.tap
        if self.needs_root:
            require_root_and_fuse(tap)
        with workspace() as work:
            t = Fixture(tap, work)
            try:
                if self._setup:
                    self._setup(t)
                for case in chosen:
                    print(f"# {case.__name__}", flush=True)
                    try:
                        case(t)
                    except Exception:
                        tap.ok(False, f"{case.__name__} ran to its end", traceback.format_exc())
            except Exception:
                tap.ok(False, "setup ran to its end", traceback.format_exc())
            finally:
                t.cleanup()
        tap.done()


def run_file(suite):
    """The end of every integration file."""
    sys.exit(suite.main())


def case_dir(t, name):
    """A fresh directory for one case's mounts, under the suite's workspace."""
    d = os.path.join(t.work, name)
    os.makedirs(d, exist_ok=True)
    return d
