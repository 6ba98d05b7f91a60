# Regenerates pg_vectors.jsonl: each input cast by a real PostgreSQL (TimeZone=UTC, DateStyle=ISO),
# with the type output function's text (format %s, i.e. boolout gives t/f) and binary send encoding. Used by src/typed/tests.rs.
# Run: python3 keymgr/testdata/gen_pg_vectors.py "psql -h HOST -p PORT -U postgres -At" > keymgr/testdata/pg_vectors.jsonl
import json, random, subprocess, sys
psql = sys.argv[1].split()
random.seed(20240102)
send = {"numeric": "numeric_send", "date": "date_send", "timestamptz": "timestamptz_send",
        "bool": "boolsend", "int4": "int4send", "int8": "int8send", "bytea": "byteasend"}
vals = {
 "numeric": ["12.34", "-12.3400", "0", "-0.00", "10000", "0.0001", "NaN", "Infinity", "-inf", "1.5e3", "1.5E-3",
             "123456789.123", "  +007.50 ", ".5", "5.", "99999999999999999999.99999999999999999999", "1e-20", "-1e20",
             "0.000000001234", "100000000", "9999.9999", "-0.5"],
 "date": ["2000-01-01", "2024-01-02", "1999-12-31", "epoch", "infinity", "-infinity", "2024-1-2", "0044-03-15 BC",
          "1-01-01 BC", "4714-11-24 BC", "5874897-12-31", "1970-01-01", "2024-02-29", "1600-03-01", "0001-01-01"],
 "timestamptz": ["2000-01-01 00:00:00+00", "2024-01-02T03:04:05.123456Z", "2024-01-02T05:04:05.123456+02",
                 "2024-01-02T05:34:05.123456+0230", "2024-01-01T23:04:05.123456-04:00", "2024-01-02 03:04:05.5",
                 "2024-01-02 03:04", "2024-01-02", "2024-01-02 24:00:00", "0044-03-15 12:00:00+00 BC", "epoch",
                 "infinity", "-infinity", "1999-12-31 23:59:59.999999", "4714-11-24 00:00:00+00 BC",
                 "294276-12-31 23:59:59.999999+00", "2024-06-30 12:00:00.000001+05:30:15", "1900-01-01 00:00:00-01"],
 "bool": ["t", "TRUE", "tr", "y", "yes", "on", "1", " true ", "f", "False", "n", "no", "off", "of", "0"],
 "int4": ["42", "-2147483648", "2147483647", " 7 ", "+5", "-0"],
 "int8": ["-9223372036854775808", "9223372036854775807", "0", "  -17\n"],
 "bytea": ["\\xDEADbeef", "\\x", "ab\\\\c\\001\\377", "plain", "\\xde ad be ef"],
}
for _ in range(60):
    i = str(random.randint(0, 10**random.randint(0, 25)))
    f = "".join(random.choice("0123456789") for _ in range(random.randint(0, 15)))
    s = ("-" if random.random() < .4 else "") + i + ("." + f if f else "")
    if random.random() < .3:
        s += "e%d" % random.randint(-30, 30)
    vals["numeric"].append(s)
for _ in range(40):
    y = random.randint(1, 9999); m = random.randint(1, 12); d = random.randint(1, 28)
    bc = " BC" if random.random() < .1 else ""
    vals["date"].append("%04d-%02d-%02d%s" % (y, m, d, bc))
    frac = "" if random.random() < .3 else "." + "".join(random.choice("0123456789") for _ in range(random.randint(1, 6)))
    off = random.choice(["", "Z", "+00", "-07", "+05:30", "+0930", "-11:15"])
    sep = random.choice([" ", "T"])
    vals["timestamptz"].append("%04d-%02d-%02d%s%02d:%02d:%02d%s%s%s" % (y, m, d, sep, random.randint(0, 23),
                               random.randint(0, 59), random.randint(0, 59), frac, off, bc))
for ty, inputs in vals.items():
    for v in inputs:
        lit = "'" + v.replace("'", "''") + "'"
        sql = "SET TimeZone='UTC'; SET DateStyle='ISO'; SET bytea_output='hex'; SELECT format('%%s', %s::%s) || '|' || encode(%s(%s::%s), 'hex')" % (lit, ty, send[ty], lit, ty)
        r = subprocess.run(psql + ["-c", sql], capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if "|" in l]
        if r.returncode != 0 or not lines:
            print(json.dumps({"ty": ty, "input": v, "error": True}))
            continue
        text, binhex = lines[-1].rsplit("|", 1)
        print(json.dumps({"ty": ty, "input": v, "text": text, "bin": binhex}))
