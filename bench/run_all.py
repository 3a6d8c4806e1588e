"""
Run every benchmark in bench/ and regenerate docs/benchmarks.md from their output.

Each bench/*.py script (except this one) runs as a subprocess from the repository root,
one after the other, with the arguments in SCRIPT_ARGS (none by default); a script whose
source mentions --markdown is asked for markdown (its stdout is then a markdown table,
its progress goes to stderr), and with --quick so is every script that mentions --quick.
Both streams are teed to this terminal and to runs/bench/<script>.log.

After each script, docs/benchmarks.md gets that script's stdout between its markers
<!-- BEGIN <script stem> --> and <!-- END <script stem> --> (as-is for markdown output,
in a text block otherwise; a section is appended when the markers are missing), plus the
machine section (<!-- BEGIN machine -->) and the timing table (<!-- BEGIN timing -->).
Sections of scripts that did not run are left as they were; with --quick the file is not
touched (smoke-run figures never replace the documented ones).

    .venv/bin/python bench/run_all.py [--only NAME ...] [--skip NAME ...] [--quick]
                                      [--timeout 3000] [--no-docs] [--list]
(`make bench` runs it with no arguments.)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
LOGS = ROOT / "runs" / "bench"
REPRODUCE = "make bench    # = .venv/bin/python bench/run_all.py"

# Arguments per script (by file name); the scripts' defaults otherwise. Chosen so that
# the whole run stays under an hour on a 2-core machine.
SCRIPT_ARGS: dict[str, list[str]] = {
    "sample_efficiency.py": ["--json", "runs/bench/sample_efficiency.json", "--jobs", "2"]}
SCRIPT_ARGS["peg_insertion.py"] = ["--jobs", "2"]     # its runs two at a time
SCRIPT_ARGS["peg_graph.py"] = ["--seeds", "0"]        # ~10 min a seed through the graph
# Longest first would finish nothing early; quick, informative scripts run first.
ORDER_LAST = ("peg_insertion.py", "sample_efficiency.py")


def discover() -> list[Path]:
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name)
    return ([p for p in scripts if p.name not in ORDER_LAST]
            + [p for p in scripts if p.name in ORDER_LAST])


def command_for(script: Path, quick: bool) -> tuple[list[str], bool]:
    """Return the command line for `script` and whether it prints markdown."""
    source = script.read_text()
    args = list(SCRIPT_ARGS.get(script.name, []))
    markdown = "--markdown" in source
    if markdown:
        args.append("--markdown")
    if quick and "--quick" in source:
        args.append("--quick")
    return [sys.executable, str(script.relative_to(ROOT)), *args], markdown


def _pump(stream, sinks: list, collected: list[str] | None) -> None:
    for line in iter(stream.readline, ""):
        for sink in sinks:
            sink.write(line)
            sink.flush()
        if collected is not None:
            collected.append(line)
    stream.close()


def run_script(command: list[str], log_path: Path, timeout: float) -> tuple[int, float, str]:
    """Run one script, teeing stdout and stderr; returns (exit code, seconds, stdout)."""
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 1))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE), env.get("PYTHONPATH")]))
    stdout_lines: list[str] = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        # Its own session, so that a timeout also ends the nodes a script may have started.
        process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pumps = [threading.Thread(target=_pump,
                                  args=(process.stdout, [sys.stdout, log], stdout_lines)),
                 threading.Thread(target=_pump,
                                  args=(process.stderr, [sys.stderr, log], None))]
        for pump in pumps:
            pump.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
            stdout_lines.append(f"\n[run_all: stopped after the {timeout:.0f} s timeout]\n")
        for pump in pumps:
            pump.join()
    return code, time.perf_counter() - start, "".join(stdout_lines)


# --------------------------------------------------------------------------- docs


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:   # not installed: say so rather than fail the whole run
        return "not installed"


def machine_info() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    memory = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kb / 2 ** 20:.0f} GiB memory"
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    packages = ", ".join(f"{name} {_version(name)}" for name in
                         ("numpy", "scipy", "torch", "pybullet", "gymnasium", "stable-baselines3"))
    return "\n".join([
        f"- CPU: {cpu}, {cores} cores available{memory}",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- {packages}",
        f"- run: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        "Reproduce:",
        "",
        "```",
        REPRODUCE,
        "```"])


def section(text: str, name: str, body: str) -> str:
    """
    Replace the part of `text` between <!-- BEGIN name --> and <!-- END name --> by body.

    Without those markers, a new section with them is appended.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip() + f"\n\n## {name}\n\n{block}\n"


def script_body(command: list[str], code: int, seconds: float, stdout: str, markdown: bool) -> str:
    shown = " ".join([".venv/bin/python", *command[1:]])
    header = f"_`{shown}`: exit {code}, {seconds:.0f} s, {datetime.date.today().isoformat()}._"
    output = stdout.strip() or "(no output)"
    if markdown:
        return f"{header}\n\n{output}"
    return f"{header}\n\n```text\n{output}\n```"


def timing_body(timings: list[tuple[str, int, float]], previous: str) -> str:
    """
    Make the timing table: this run's scripts, earlier runs' rows for the others, a total.

    The earlier rows are parsed from the previous table.
    """
    rows = {m.group(1): (int(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^\| (\S+\.py) \| (-?\d+) \| ([\d.]+) \|$", previous, re.MULTILINE)}
    rows.update({name: (code, seconds) for name, code, seconds in timings})
    total = sum(seconds for _, seconds in rows.values())
    lines = ["| script | exit | wall time (s) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {code} | {seconds:.0f} |"
              for name, (code, seconds) in sorted(rows.items())]
    lines.append(f"| **total** | | **{total:.0f}** ({total / 60:.1f} min) |")
    return "\n".join(lines)


def current_section(name: str) -> str:
    text = DOC.read_text() if DOC.exists() else ""
    match = re.search(f"<!-- BEGIN {re.escape(name)} -->(.*?)<!-- END {re.escape(name)} -->",
                      text, re.DOTALL)
    return match.group(1) if match else ""


def update_doc(updates: dict[str, str]) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    for name, body in updates.items():
        text = section(text, name, body)
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None,
                        help="script names (with or without .py)")
    parser.add_argument("--skip", nargs="+", default=[], help="script names to leave out")
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to the scripts that take it (implies --no-docs)")
    parser.add_argument("--timeout", type=float, default=3000.0, help="seconds per script")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args()
    args.no_docs = args.no_docs or args.quick

    def stem(name: str) -> str:
        return name[:-3] if name.endswith(".py") else name

    if args.quick and not args.no_docs and not args.list:
        print("--quick: docs/benchmarks.md is left alone (smoke-run figures are not the "
              "documented ones)")
        args.no_docs = True
    scripts = discover()
    if args.only:
        wanted = {stem(n) for n in args.only}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            parser.error(f"unknown script(s) {sorted(unknown)}; "
                         f"available: {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in wanted]
    scripts = [p for p in scripts if p.stem not in {stem(n) for n in args.skip}]
    if args.list:
        for script in scripts:
            print(" ".join(command_for(script, args.quick)[0]))
        return 0

    LOGS.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, int, float]] = []
    previous_timings = current_section("timing")
    start = time.perf_counter()
    for script in scripts:
        command, markdown = command_for(script, args.quick)
        print(f"\n===== {script.name}: {' '.join(command[1:])}", flush=True)
        code, seconds, stdout = run_script(command, LOGS / f"{script.stem}.log", args.timeout)
        timings.append((script.name, code, seconds))
        print(f"===== {script.name}: exit {code}, {seconds:.1f} s "
              f"(total so far {time.perf_counter() - start:.1f} s)", flush=True)
        if not args.no_docs:
            update_doc({script.stem: script_body(command, code, seconds, stdout, markdown),
                        "machine": machine_info(),
                        "timing": timing_body(timings, previous_timings)})
    total = time.perf_counter() - start
    print("\nscript                      exit   seconds")
    for name, code, seconds in timings:
        print(f"{name:27s} {code:4d} {seconds:9.1f}")
    print(f"{'total':27s}      {total:9.1f}  ({total / 60:.1f} min)")
    if not args.no_docs:
        print(f"updated {DOC.relative_to(ROOT)}")
    return 0 if all(code == 0 for _, code, _ in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
