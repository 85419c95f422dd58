#!/usr/bin/env python3
"""File-level call graph of the services: an edge A -> B when A.c calls a
non-static function defined in B.c (text-based: comments and strings are
stripped, a definition is a line at column 0 that opens a function body).
Prints every circle (strongly connected component) of more than one file and
the largest size per folder.

  tests/tools/callgraph.py delivery ingest      # print
  tests/tools/callgraph.py --max delivery=3 --max ingest=2 delivery ingest
                                                # exit 1 when a circle is larger

The limits are the layering rule of issue 8: in delivery/ only the event-loop
core (connection, handshake, server) may call each other in a circle; ingest/
has no circle of more than two files."""
import argparse
import os
import re
import sys

DEF = re.compile(r"^(?!static\b)[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\s*\(")
CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
KEYWORDS = {"if", "while", "for", "switch", "return", "sizeof"}


def strip(src):
    src = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), src, flags=re.S)
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"'(?:\\.|[^'\\])'", "' '", src)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', src)


def definitions(path, text):
    """Names of the non-static functions path defines."""
    lines = text.split("\n")
    out = set()
    for i, line in enumerate(lines):
        m = DEF.match(line)
        if not m or m.group(1) in KEYWORDS or line.rstrip().endswith(";"):
            continue
        # A definition's body opens before the next ';' (a prototype has none).
        rest = "\n".join(lines[i:i + 12])
        brace, semi = rest.find("{"), rest.find(";")
        if brace >= 0 and (semi < 0 or brace < semi):
            out.add(m.group(1))
    return out


def graph(folder):
    texts = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".c"):
            p = os.path.join(folder, f)
            with open(p, errors="replace") as fh:
                texts[p] = strip(fh.read())
    owner = {}
    for p, t in texts.items():
        for name in definitions(p, t):
            owner.setdefault(name, p)
    edges = {p: set() for p in texts}
    for p, t in texts.items():
        for name in set(CALL.findall(t)):
            q = owner.get(name)
            if q is not None and q != p:
                edges[p].add(q)
    return edges


def circles(edges):
    """Tarjan's strongly connected components, largest first."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out, key=len, reverse=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--max", action="append", default=[], metavar="FOLDER=N",
                    help="fail when FOLDER has a circle of more than N files")
    args = ap.parse_args()
    limits = dict((k, int(v)) for k, v in (m.split("=", 1) for m in args.max))
    failed = False
    for folder in args.folders:
        comps = circles(graph(folder))
        for comp in comps:
            if len(comp) > 1:
                print("%s: circle of %d: %s" % (folder, len(comp), " ".join(comp)))
        largest = len(comps[0]) if comps else 0
        print("%s: largest circle %d of %d files" % (folder, largest, sum(map(len, comps))))
        name = os.path.basename(os.path.normpath(folder))
        if name in limits and largest > limits[name]:
            print("%s: a circle of %d files is over the limit of %d" % (folder, largest,
                                                                        limits[name]))
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
