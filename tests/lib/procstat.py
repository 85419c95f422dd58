"""CPU time of processes from /proc, for the benchmarks (one reader, so
every figure counts the same fields)."""

import os

_TCK = os.sysconf("SC_CLK_TCK")
_RAISE = object()


def cpu_seconds(pid, tid=None, missing=_RAISE):
    """utime + stime of a process (all its threads) or of one thread, in
    seconds. A process that is gone raises OSError, or gives `missing`."""
    path = "/proc/%d/stat" % pid if tid is None else "/proc/%d/task/%d/stat" % (pid, tid)
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        if missing is _RAISE:
            raise
        return missing
    return (int(fields[11]) + int(fields[12])) / _TCK


def tree_pids(pid):
    """pid plus its direct children (a launcher script and its JVM, say)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [pid] + [int(c) for c in f.read().split()]
    except OSError:
        return [pid]


def tree_cpu_seconds(pid):
    """pid plus its direct children (a launcher script and its JVM, say);
    children that are gone count 0."""
    return sum(cpu_seconds(p, missing=0.0) for p in tree_pids(pid))
