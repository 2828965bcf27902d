#!/usr/bin/env python3
"""Times one flush of the attempted domains on Postgres, for the schema and statement before and
after fix 14 of BENCHMARKS.md, and the two crossings: 4,000 (account, domain) rows that all exist
already (the write-behind adds to them), 10 flushes each, the median and range of the time psql
reports per flush.

    python3 benches/attempts_flush.py [DATABASE]   # default: a database attempts_flush, created

It drops and creates the database it uses; nothing else is touched.
"""
import re
import statistics
import subprocess
import sys

PSQL = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres"]
ROWS = [(a, f"unknown{d}.acct{a}.example") for a in range(1, 1001) for d in range(4)]
UPSERT = (
    " ON CONFLICT (account_id, domain) DO UPDATE SET attempts = t.attempts + excluded.attempts,"
    " first_attempt_time = LEAST(t.first_attempt_time, excluded.first_attempt_time),"
    " last_attempt_time = GREATEST(t.last_attempt_time, excluded.last_attempt_time);"
)
TABLE = (
    "DROP TABLE IF EXISTS attempted_domains; CREATE TABLE attempted_domains ("
    "account_id BIGINT NOT NULL, domain TEXT NOT NULL, attempts BIGINT NOT NULL,"
    " first_attempt_time BIGINT NOT NULL, last_attempt_time BIGINT NOT NULL,"
    " PRIMARY KEY (account_id, domain));"
)
SCHEMAS = {
    "index on (account_id, last_attempt_time DESC, domain)": "CREATE INDEX attempted_domains_recent"
    " ON attempted_domains (account_id, last_attempt_time DESC, domain);",
    "no such index, fillfactor 50": "ALTER TABLE attempted_domains SET (fillfactor = 50);",
}


def values(time):
    """The old statements: 500 rows of VALUES each, in one transaction."""
    statements = ["BEGIN;"]
    for start in range(0, len(ROWS), 500):
        rows = ",".join(f"({a},'{d}',1,{time},{time})" for a, d in ROWS[start : start + 500])
        statements.append(f"INSERT INTO attempted_domains AS t VALUES {rows}{UPSERT}")
    return "\n".join(statements + ["COMMIT;"])


def unnest(time):
    """The new statement: the rows as five arrays."""
    accounts = ",".join(str(a) for a, _ in ROWS)
    domains = ",".join(f'"{d}"' for _, d in ROWS)
    n = len(ROWS)
    return (
        f"INSERT INTO attempted_domains AS t SELECT * FROM unnest('{{{accounts}}}'::bigint[],"
        f" '{{{domains}}}'::text[], array_fill(1::bigint, ARRAY[{n}]),"
        f" array_fill({time}::bigint, ARRAY[{n}]), array_fill({time}::bigint, ARRAY[{n}])){UPSERT}"
    )


def flush_times(database, schema, statement):
    script = [TABLE, schema, unnest(1), "\\timing on"]
    for time in range(2, 12):
        script += ["\\echo flush", statement(time)]
    output = subprocess.run(
        PSQL + ["-d", database], input="\n".join(script), capture_output=True, text=True, check=True
    ).stdout
    times = []
    for line in output.splitlines():
        if line == "flush":
            times.append(0.0)
        elif times and (match := re.match(r"Time: ([0-9.]+) ms", line)):
            times[-1] += float(match.group(1))
    return times


def main():
    database = sys.argv[1] if len(sys.argv) > 1 else "attempts_flush"
    for sql in (f"DROP DATABASE IF EXISTS {database}", f"CREATE DATABASE {database}"):
        subprocess.run(PSQL + ["-c", sql], check=True)
    print("| schema | statement | median ms per flush | min – max ms |")
    print("|---|---|---:|---:|")
    for name, schema in SCHEMAS.items():
        for label, statement in (("500-row VALUES lists", values), ("one unnest", unnest)):
            times = flush_times(database, schema, statement)
            print(
                f"| {name} | {label} | {statistics.median(times):.1f} |"
                f" {min(times):.1f} – {max(times):.1f} |"
            )


main()
