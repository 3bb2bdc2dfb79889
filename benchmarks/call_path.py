"""Which project modules one `python -m sweep ...` command passes through, and where it climbs back into one it left.

    python benchmarks/call_path.py [--tree PATH] [--json] -- lr --steps 30 --trials 3 --runs-dir /tmp/x

Runs the command in this process (runpy, as `python -m sweep` does, whatever the sweep package's layout) under
sys.setprofile, in every thread it starts too, and follows the Python calls whose module is the project's (`sweep*`,
`train_core*`; sweep/__main__.py counts as sweep.__main__). A stack of project modules per thread; library frames in
between are skipped, so a call's caller is the nearest project frame.

- modules: the project modules whose code ran; "imported only" ones ran just their module (or class) bodies.
- edges: distinct caller -> callee module pairs (A != M).
- returns: a call from A into M (M != A) while M already has a frame lower on the stack: M called down into something
  that calls back up into M (a callback, a circular import). Counted as distinct (A -> M) pairs, with the distinct
  caller -> callee functions behind each; raw call counts grow with steps and trials and are in --json only.
- cli re-entered: the returns into sweep.cli* modules.

--tree (default: this checkout) goes first on sys.path, so its `sweep` and `train_core` are the ones measured; the
report names the folder they came from. The cwd is unchanged: the command's data and runs land where it is run.
`--workers N` processes are not followed. The command's own output comes first (on stderr with --json); the exit
status is the command's.
"""

import argparse
import contextlib
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sweep", "train_core")
CO_OPTIMIZED = 0x1  # set on functions (and lambdas, comprehensions); not on module or class bodies


class CallPath:
    """The profile function and what it saw. Per event it does a cached lookup by code object, so that torch's
    Python frames in the training loop cost little."""

    def __init__(self):
        self.code_module = {}  # id(code) -> (code, project module or None); the code kept alive so its id is not reused
        self.stacks = {}  # thread id -> ([(module, code)], {module: frames on the stack})
        self.ran = {}  # module -> True once a function of it ran, False while only bodies did
        self.edges = {}  # (A, M) -> calls
        self.returns = {}  # (A, M) -> {(caller function, callee function, via): calls}

    @staticmethod
    def _module(frame):
        name = frame.f_globals.get("__name__")
        if name == "__main__":  # runpy's sweep/__main__.py
            name = getattr(frame.f_globals.get("__spec__"), "name", None)
        if isinstance(name, str) and name.partition(".")[0] in PACKAGES:
            return name
        return None

    def profile(self, frame, event, arg):
        if event == "call":
            code = frame.f_code
            entry = self.code_module.get(id(code))
            if entry is None:
                entry = self.code_module[id(code)] = (code, self._module(frame))
            module = entry[1]
            if module is None:
                return
            ident = threading.get_ident()
            state = self.stacks.get(ident)
            if state is None:
                state = self.stacks[ident] = ([], {})
            stack, on = state
            if not self.ran.get(module):
                self.ran[module] = bool(code.co_flags & CO_OPTIMIZED)
            if stack:
                caller, caller_code = stack[-1]
                if caller != module:
                    pair = (caller, module)
                    self.edges[pair] = self.edges.get(pair, 0) + 1
                    if on.get(module):
                        self._return(pair, caller_code, frame)
            stack.append((module, code))
            on[module] = on.get(module, 0) + 1
        elif event == "return":
            entry = self.code_module.get(id(frame.f_code))
            if entry is None or entry[1] is None:
                return
            state = self.stacks.get(threading.get_ident())
            if state and state[0]:  # a frame entered before the profile was set has no entry to pop
                module, _ = state[0].pop()
                state[1][module] -= 1

    def _return(self, pair, caller_code, frame):
        # via: the library frame that made the call, when it is not the project caller itself
        back = frame.f_back
        via = None
        if back is not None and back.f_code is not caller_code:
            via = f"{back.f_globals.get('__name__')}.{back.f_code.co_qualname}"
        key = (caller_code.co_qualname, frame.f_code.co_qualname, via)
        calls = self.returns.setdefault(pair, {})
        calls[key] = calls.get(key, 0) + 1

    def run(self, argv: list[str]) -> int:
        saved = sys.argv
        sys.argv = ["python -m sweep", *argv]  # run_module puts sweep/__main__.py's path in argv[0]
        threading.setprofile(self.profile)
        sys.setprofile(self.profile)
        try:
            runpy.run_module("sweep", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            sys.argv = saved
        return code

    def report(self) -> dict:
        # list() copies in C, under the GIL: a daemon thread still profiled cannot change a dict mid-copy
        ran = dict(list(self.ran.items()))
        edges = dict(list(self.edges.items()))
        returns = {pair: dict(list(calls.items())) for pair, calls in list(self.returns.items())}
        pairs = sorted(returns)
        cli = [p for p in pairs if p[1].startswith("sweep.cli")]
        return {
            "modules": sorted(ran),
            "imported_only": sorted(m for m, r in ran.items() if not r),
            "edges": [{"from": a, "to": m, "calls": edges[a, m]} for a, m in sorted(edges)],
            "returns": [
                {"from": a, "to": m, "functions": [
                    {"caller": c, "callee": f, "via": v, "calls": n} for (c, f, v), n in sorted(
                        returns[a, m].items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or ""))
                ]} for a, m in pairs
            ],
            "returned_to": sorted({m for _, m in pairs}),
            "cli_reentries": {"pairs": len(cli), "functions": sum(len(returns[p]) for p in cli)},
        }


def print_text(command: list[str], tree: str, code: int, seconds: float, report: dict) -> None:
    modules, only = report["modules"], set(report["imported_only"])
    print(f"call path: python -m sweep {' '.join(command)}")
    print(f"tree: {tree}   exit {code}, {seconds:.1f} s under the profiler")
    print(f"modules: {len(modules)} entered ({len(modules) - len(only)} ran functions, {len(only)} imported only)")
    for m in modules:
        print(f"  {m}{'   (imported only)' if m in only else ''}")
    print(f"edges: {len(report['edges'])} distinct module -> module calls")
    returns = report["returns"]
    print(f"returns: {len(returns)} distinct (A -> M) pairs, into {len(report['returned_to'])} distinct modules M")
    for r in returns:
        print(f"  {r['from']} -> {r['to']}")
        for f in r["functions"]:
            via = f"   via {f['via']}" if f["via"] else ""
            print(f"      {f['caller']} -> {f['callee']}{via}")
    cli = report["cli_reentries"]
    print(f"cli re-entered: {cli['pairs']} pairs, {cli['functions']} caller -> callee functions")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: call_path.py [--tree PATH] [--json] -- SWEEP ARGS...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(description="modules a `python -m sweep` command passes through")
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose sweep and train_core to run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the command's output to stderr)")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1:]
    sys.path.insert(0, str(args.tree.resolve()))  # ahead of the editable install's finder, which comes after sys.path

    call_path = CallPath()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        code = call_path.run(command)
    seconds = time.perf_counter() - started
    # where the packages came from: a `sweep` imported before --tree was put first would be measured instead
    tree = ", ".join(dict.fromkeys(os.path.dirname(os.path.dirname(sys.modules[p].__file__ or "?"))
                                   for p in PACKAGES if p in sys.modules))
    report = call_path.report()
    if args.json:
        print(json.dumps({"command": command, "tree": tree, "exit": code, "seconds": round(seconds, 1), **report},
                         indent=1))
    else:
        sys.stdout.flush()
        print_text(command, tree, code, seconds, report)
    return code


if __name__ == "__main__":
    sys.exit(main())
