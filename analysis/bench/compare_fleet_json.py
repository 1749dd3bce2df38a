"""Compares two `slicetrace fleet --format json` answers: every string,
bool, null and integer (counts, states, reasons, exit decision) must be
equal; floats (t-digest quantiles and what is derived from them) are
compared by relative difference, except the peers' robust z-scores
(`peer_z_*`, differences of quantiles scaled by a MAD: near 0 a relative
difference means nothing), compared by absolute difference. Prints one
JSON line."""
import json, sys

a, b = (json.load(open(p)) for p in sys.argv[1:3])
exact_diffs, floats, worst, worst_z = [], 0, (0.0, None), (0.0, None)


def walk(x, y, path):
    global floats, worst, worst_z
    if isinstance(x, dict) and isinstance(y, dict):
        if x.keys() != y.keys():
            exact_diffs.append(path)
        for k in x.keys() & y.keys():
            walk(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            exact_diffs.append(path)
        for i, (u, v) in enumerate(zip(x, y)):
            walk(u, v, f"{path}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        floats += 1
        if x is None or y is None:
            exact_diffs.append(path)
        elif path.rsplit(".", 1)[-1].startswith("peer_z"):
            d = abs(x - y)
            if d > worst_z[0]:
                worst_z = (d, path)
        else:
            d = abs(x - y) / max(abs(x), abs(y), 1e-12)
            if d > worst[0]:
                worst = (d, path)
    elif x != y:
        exact_diffs.append(path)


walk(a, b, "")
print(json.dumps({
    "exact_fields_equal": not exact_diffs,
    "exact_diffs": exact_diffs[:10],
    "float_fields": floats,
    "max_rel_diff": worst[0],
    "max_rel_diff_at": worst[1],
    "max_abs_diff_peer_z": worst_z[0],
    "max_abs_diff_peer_z_at": worst_z[1],
}))
