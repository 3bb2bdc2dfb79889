"""benchmarks/call_path.py on a made-up tree: the modules it enters, threads included, and the returns it counts."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "call_path.py"

TREE = {
    "sweep/__init__.py": "",
    "sweep/__main__.py": "import sys\nfrom sweep.cli import main\n\nsys.exit(main())\n",
    "sweep/cli.py": (
        "import sys\n"
        "from sweep import work\n\n"
        "def main():\n"
        "    def log(message):\n"
        "        return message\n"
        "    work.run(log)\n"
        "    return 0 if sys.argv[1:] == ['go'] else 3\n"
    ),
    "sweep/work.py": (
        "import threading\n"
        "import lib\n"
        "from train_core import core, tick\n\n"
        "def run(log):\n"
        "    for i in range(3):\n"
        "        core.step(lambda: i)\n"  # train_core.core -> sweep.work: a return
        "    lib.call(log)\n"  # sweep.work -> sweep.cli through a library frame: a return into the cli
        "    thread = threading.Thread(target=tick.tick)\n"
        "    thread.start()\n"
        "    thread.join()\n"
    ),
    "train_core/__init__.py": "",
    "train_core/core.py": "def step(callback):\n    return callback()\n",
    "train_core/tick.py": "def tick():\n    return 1\n",
    "train_core/unused.py": "class Config:\n    x = 1\n",
    "lib.py": "import train_core.unused\n\ndef call(f):\n    return f('hi')\n",
}


def test_call_path_counts_modules_and_the_calls_back_into_one_on_the_stack(tmp_path):
    for name, text in TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    out = subprocess.run([sys.executable, str(SCRIPT), "--tree", str(tmp_path), "--json", "--", "go"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tree"] == str(tmp_path.resolve())
    assert report["modules"] == ["sweep", "sweep.__main__", "sweep.cli", "sweep.work", "train_core", "train_core.core",
                                 "train_core.tick", "train_core.unused"]
    assert report["imported_only"] == ["sweep", "sweep.__main__", "train_core", "train_core.unused"]
    returns = {(r["from"], r["to"]): r["functions"] for r in report["returns"]}
    assert sorted(returns) == [("sweep.work", "sweep.cli"), ("train_core.core", "sweep.work")]
    assert returns["sweep.work", "sweep.cli"] == [{"caller": "run", "callee": "main.<locals>.log", "via": "lib.call",
                                                  "calls": 1}]
    assert returns["train_core.core", "sweep.work"][0]["calls"] == 3
    assert report["returned_to"] == ["sweep.cli", "sweep.work"]
    assert report["cli_reentries"] == {"pairs": 1, "functions": 1}
    # tick ran only in the thread (it is not imported only), where it has no project caller: its one edge is the import
    assert [e["calls"] for e in report["edges"] if e["to"] == "train_core.tick"] == [1]
    # the command's exit status is the script's
    assert subprocess.run([sys.executable, str(SCRIPT), "--tree", str(tmp_path), "--", "stop"], capture_output=True,
                          cwd=tmp_path, timeout=60).returncode == 3
