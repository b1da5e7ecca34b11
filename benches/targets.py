#!/usr/bin/env python3
"""targets.py [--pinned] CSV... -- issue #6's ratios from swarm-lab interop CSVs in which pow is `ext`.

For every real seeder S (per payload size, taken from the CSV's bytes column):
  leech speed  = pow's median xfer MiB/s from S / the best real leecher's median from S  (target >= 1.25)
  leech CPU    = pow's median CPU s/GiB from S / the lowest real leecher median from S    (target <= 0.75)
For every real leecher L:
  seed speed   = L's median xfer MiB/s from pow's seed / L's best median from a real seed (target >= 1.0)
and pow's leech peak RSS (max over runs). With OPENSSL_SHA1_GIB set (one core's SHA-1 speed
from `openssl speed -evp sha1`, as benches/targets.sh measures it in the same run), also
  leech vs SHA-1 = pow's median xfer MiB/s from S / that speed                            (target >= 0.40)
for every seeder S, pow's own seed included. Next to it, what the two processes' CPU allows:
  2-core ceiling = cores / (S's median seed CPU s/GiB + pow's median leech CPU s/GiB)
the speed at which the seeder and pow, sharing this machine's cores, would keep every core busy.
--pinned: the CSVs come from `benches/swarm.sh --pin` (seeder on core 0, leecher on core 1), so
each process has one core and the ceiling is 1 / the larger of the two CPU s/GiB.
A row says MET or MISSED; nothing is asserted.
"""
import csv, os, statistics, sys
from collections import defaultdict

POW = 'ext'
CORES = os.cpu_count()


def name(seeder):
    return 'pow' if seeder == POW else seeder


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ('-h', '--help'):
        print(__doc__)
        sys.exit(0)
    pinned = sys.argv[1] == '--pinned'
    paths = sys.argv[2:] if pinned else sys.argv[1:]
    # (bytes, seeder, leecher) -> list of verified rows
    runs = defaultdict(list)
    for path in paths:
        for r in csv.DictReader(open(path)):
            if r['verified'] == 'yes':
                runs[(r['bytes'], r['seeder'], r['leecher'])].append(r)

    def med(size, s, l, key):
        vals = [num(r[key]) for r in runs.get((size, s, l), []) if num(r[key]) is not None]
        return statistics.median(vals) if vals else None

    sizes = sorted({k[0] for k in runs}, key=int)
    for size in sizes:
        seeders = sorted({k[1] for k in runs if k[0] == size}, key=lambda s: (s == POW, s))
        leechers = sorted({k[2] for k in runs if k[0] == size})
        mib = int(size) / 2**20
        print(f'\n### {mib:.0f} MiB payload{", seeder on core 0, leecher on core 1" if pinned else ""}')
        print('| target | pair | pow | best real | ratio | target | verdict |')
        print('|---|---|---|---|---|---|---|')
        for s in seeders:
            ours = med(size, s, POW, 'xfer_mib_s')
            if ours is None:
                continue
            sha1 = num(os.environ.get('OPENSSL_SHA1_GIB'))
            if sha1:
                ratio = ours / (sha1 * 1024)
                print(f'| leech MiB/s vs one-core SHA-1 | from {name(s)} | {ours:.0f} | {sha1 * 1024:.0f} (openssl) '
                      f'| {ratio:.2f}x | >= 0.40x | {"MET" if ratio >= 0.4 else "MISSED"} |')
            seed_cpu = med(size, s, POW, 'seed_cpu_s_per_gib')
            leech_cpu = med(size, s, POW, 'leech_cpu_s_per_gib')
            if seed_cpu and leech_cpu and pinned:
                ceiling = 1024 / max(seed_cpu, leech_cpu)
                print(f'| leech MiB/s vs the one-core ceiling | from {name(s)} | {ours:.0f} | {ceiling:.0f} '
                      f'(1 / max({seed_cpu:.2f} seed, {leech_cpu:.2f} pow s/GiB)) | {ours / ceiling:.2f}x '
                      f'| | figure |')
            elif seed_cpu and leech_cpu:
                ceiling = CORES * 1024 / (seed_cpu + leech_cpu)
                print(f'| leech MiB/s vs the {CORES}-core ceiling | from {name(s)} | {ours:.0f} | {ceiling:.0f} '
                      f'({CORES} / ({seed_cpu:.2f} seed + {leech_cpu:.2f} pow s/GiB)) | {ours / ceiling:.2f}x '
                      f'| | figure |')
            if s == POW:
                continue
            real = [l for l in leechers if l != POW and med(size, s, l, 'xfer_mib_s') is not None]
            if not real:
                continue
            best = max(real, key=lambda l: med(size, s, l, 'xfer_mib_s'))
            b = med(size, s, best, 'xfer_mib_s')
            ratio = ours / b
            print(f'| leech MiB/s | from {s} | {ours:.0f} | {b:.0f} ({best}) | {ratio:.2f}x | >= 1.25x '
                  f'| {"MET" if ratio >= 1.25 else "MISSED"} |')
            cpu = leech_cpu
            cpus = [(med(size, s, l, 'leech_cpu_s_per_gib'), l) for l in real]
            cpus = [c for c in cpus if c[0] is not None]
            if cpu is not None and cpus:
                low, who = min(cpus)
                ratio = cpu / low
                print(f'| leech CPU s/GiB | from {s} | {cpu:.2f} | {low:.2f} ({who}) | {ratio:.2f}x | <= 0.75x '
                      f'| {"MET" if ratio <= 0.75 else "MISSED"} |')
        for l in leechers:
            if l == POW:
                continue
            ours = med(size, POW, l, 'xfer_mib_s')
            real = [(med(size, s, l, 'xfer_mib_s'), s) for s in seeders if s != POW]
            real = [r for r in real if r[0] is not None]
            if ours is None or not real:
                continue
            b, who = max(real)
            ratio = ours / b
            print(f'| seed MiB/s | {l} from pow | {ours:.0f} | {b:.0f} (from {who}) | {ratio:.2f}x | >= 1.0x '
                  f'| {"MET" if ratio >= 1.0 else "MISSED"} |')
        rss = [num(r['leech_peak_rss_kib']) for (sz, s, l), rows in runs.items()
               if sz == size and l == POW for r in rows if num(r['leech_peak_rss_kib'])]
        if rss:
            peak = max(rss) / 1024
            verdict = ('MET' if peak <= 48 else 'MISSED') if int(size) >= 2**30 else 'n/a (target is for 1 GiB)'
            print(f'| leech peak RSS MiB | pow, any seeder | {peak:.0f} | | | <= 48 | {verdict} |')


if __name__ == '__main__':
    main()
