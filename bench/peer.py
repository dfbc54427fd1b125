#!/usr/bin/env python3
"""DuckDB, the peer, in a process of its own so that its peak memory is its own:

    python3 bench/peer.py TASK 'JSON ARGUMENTS'

prints one JSON object: the task's figures and `peak_rss_mib` (this process's VmHWM). The
suite (bench/suite.py) runs it; the tasks are the peer halves of its benchmarks."""

import json
import sys
import tempfile

from tributary_server import memory_mib


def task_super(rows, runs):
    import super as superbench
    texts = list(superbench.documents(rows))
    return superbench.duckdb_figures(texts, runs)


def task_cdc(rows, changes_path, runs):
    import mirror
    merges, reads = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as scratch:
            merge, read, result, _ = mirror.duckdb_run(rows, changes_path, scratch)
        merges.append(merge)
        reads.append(read)
    return {"merges": merges, "reads": reads, "result": [float(v) for v in result]}


def task_analytics(directory, runs):
    import analytics
    return analytics.duckdb_figures(directory, runs)


def task_statements(scale, runs):
    import statements
    return statements.duckdb_figures(scale, runs)


TASKS = {"super": task_super, "cdc": task_cdc, "analytics": task_analytics,
         "statements": task_statements}


def main():
    task, arguments = sys.argv[1], json.loads(sys.argv[2])
    figures = TASKS[task](**arguments)
    figures["peak_rss_mib"] = memory_mib("self", "VmHWM")
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
