#!/usr/bin/env python3
"""validate-json.py: checks migproxy's JSON output against docs/schema/.

  validate-json.py SCHEMA FILE...          each FILE is one JSON document
  validate-json.py --lines SCHEMA FILE...  each line of each FILE is one
  validate-json.py --suite --migproxy BIN --samples DIR
      the schemas themselves (draft 2020-12), documents that must fail
      (a renamed key, a missing `schema`), and `migproxy analyze --json`
      of every sample stream in DIR, alone and together

SCHEMA is report, metrics-line, analyze, plan or replay
(docs/schema/NAME.schema.json),
a part of one (report#/$defs/session: what every session's report holds),
or a path.  Exit status 0: all valid; 1: a document is not (each error
names the file, line and the key's path); 2: usage, or no jsonschema.

Works with Debian bookworm's python3-jsonschema (4.10, RefResolver) and
later ones (4.18+, the referencing library): the schemas refer to each
other by their $id (urn:migproxy:schema:NAME).
"""
import argparse
import copy
import glob
import json
import os
import subprocess
import sys

try:
    import jsonschema
    from jsonschema import Draft202012Validator
except ImportError:  # a missing package is a failure, not a skip
    sys.stderr.write("validate-json.py: python3-jsonschema is not installed "
                     "(scripts/setup.sh installs it)\n")
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_DIR = os.path.join(HERE, "..", "docs", "schema")
NAMES = ("analyze", "report", "metrics-line", "plan", "replay")


def load_schemas(schema_dir):
    """{name: schema} of every docs/schema/*.schema.json."""
    schemas = {}
    for name in NAMES:
        with open(os.path.join(schema_dir, name + ".schema.json")) as f:
            schemas[name] = json.load(f)
    return schemas


def make_validator(schemas, schema):
    """A validator of `schema` that resolves the others by $id."""
    try:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012
        registry = Registry().with_resources(
            (s["$id"], Resource.from_contents(s, default_specification=DRAFT202012))
            for s in schemas.values())
        return Draft202012Validator(schema, registry=registry)
    except ImportError:  # jsonschema < 4.18
        store = {s["$id"]: s for s in schemas.values()}
        resolver = jsonschema.RefResolver.from_schema(schema, store=store)
        return Draft202012Validator(schema, resolver=resolver)


def schema_for(arg, schemas):
    """NAME, NAME#/$defs/PART (that part alone, closed), or a path."""
    name, _, pointer = arg.partition("#")
    if name in schemas and pointer:
        return {"$schema": schemas[name]["$schema"],
                "$ref": schemas[name]["$id"] + "#" + pointer,
                "unevaluatedProperties": False}
    if name in schemas:
        return schemas[name]
    with open(arg) as f:
        return json.load(f)


def errors_of(validator, doc):
    """The errors as 'PATH: message' strings, deepest first (an if/then or
    oneOf error says more through its context)."""
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        leaves = [e]
        while leaves and leaves[0].context:
            leaves = sorted(leaves[0].context, key=lambda c: -len(c.path))
        for leaf in leaves[:3]:
            path = "/".join(str(p) for p in leaf.absolute_path) or "(top)"
            out.append("%s: %s" % (path, leaf.message[:300]))
    return out


def check_documents(validator, name, docs):
    """docs: [(where, document)].  @return the number of invalid ones."""
    bad = 0
    for where, doc in docs:
        errs = errors_of(validator, doc)
        if errs:
            bad += 1
            for err in errs[:10]:
                print("%s: not valid against %s: %s" % (where, name, err))
    return bad


def read_docs(path, lines):
    with open(path) as f:
        text = f.read()
    if not lines:
        return [(path, json.loads(text))]
    if text and not text.endswith("\n"):
        raise ValueError("%s: the last line is not whole" % path)
    return [("%s:%d" % (path, i + 1), json.loads(line))
            for i, line in enumerate(text.splitlines())]


def validate_files(args, schemas):
    schema = schema_for(args.schema, schemas)
    validator = make_validator(schemas, schema)
    bad = total = 0
    for path in args.files:
        try:
            docs = read_docs(path, args.lines)
        except (OSError, ValueError) as e:
            print("%s: %s" % (path, e))
            bad += 1
            continue
        if args.lines and not docs:
            print("%s: no line" % path)
            bad += 1
        total += len(docs)
        bad += check_documents(validator, args.schema, docs)
    if bad:
        print("%d of %d documents not valid" % (bad, total))
        return 1
    return 0


def must_fail(validator, what, doc):
    """A document that must not validate; @return 1 if it does."""
    if not errors_of(validator, doc):
        print("accepted, should not be: %s" % what)
        return 1
    return 0


def renamed(doc, path, new):
    """A copy of doc with the key at dotted `path` renamed to `new`."""
    d = copy.deepcopy(doc)
    parts = path.split(".")
    o = d
    for p in parts[:-1]:
        o = o[int(p)] if isinstance(o, list) else o[p]
    o[new] = o.pop(parts[-1])
    return d


def suite(args, schemas):
    bad = 0
    for name, s in schemas.items():
        try:
            Draft202012Validator.check_schema(s)
        except jsonschema.SchemaError as e:
            print("%s.schema.json: not a valid schema: %s" % (name, e.message))
            bad += 1
    analyze = make_validator(schemas, schemas["analyze"])
    samples = sorted(glob.glob(os.path.join(args.samples, "*.mig*")))
    if not samples:
        print("no sample stream in %s" % args.samples)
        return 1
    docs = []
    for path in samples + [samples]:
        files = path if isinstance(path, list) else [path]
        out = subprocess.run([args.migproxy, "analyze", "--json", "-q"] + files,
                             stdout=subprocess.PIPE, check=False)
        if out.returncode != 0:
            print("migproxy analyze %s: exit status %d"
                  % (" ".join(files), out.returncode))
            bad += 1
            continue
        doc = json.loads(out.stdout)
        docs.append(doc)
        bad += check_documents(analyze, "analyze", [(" ".join(files), doc)])
    # a file analyze cannot open: the input_error document
    out = subprocess.run([args.migproxy, "analyze", "--json", "-q",
                          os.path.join(args.samples, "no-such-file")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         check=False)
    bad += check_documents(analyze, "analyze",
                           [("no-such-file", json.loads(out.stdout))])

    # strict enough to catch a renamed or missing key
    one = docs[0]
    for path, new in (("ram.pages.normal", "norml"), ("stream", "strem"),
                      ("rounds.0.dirty_pages", "dirty"),
                      ("bytes.ram_pages", "ram_page"), ("file", "path")):
        bad += must_fail(analyze, "analyze with %s renamed" % path,
                         renamed(one, path, new))
    no_schema = copy.deepcopy(one)
    del no_schema["schema"]
    bad += must_fail(analyze, "analyze without schema", no_schema)
    two = copy.deepcopy(one)
    two["schema"] = 2
    bad += must_fail(analyze, "analyze with schema 2", two)
    print("%d sample documents checked, %s" % (len(docs),
                                               "FAILED" if bad else "valid"))
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schemas", default=SCHEMA_DIR,
                    help="directory of the *.schema.json files")
    ap.add_argument("--lines", action="store_true",
                    help="one document per line (--metrics)")
    ap.add_argument("--suite", action="store_true")
    ap.add_argument("--migproxy")
    ap.add_argument("--samples")
    ap.add_argument("schema", nargs="?")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    schemas = load_schemas(args.schemas)
    if args.suite:
        if not args.migproxy or not args.samples:
            ap.error("--suite needs --migproxy and --samples")
        return suite(args, schemas)
    if not args.schema or not args.files:
        ap.error("SCHEMA and FILE expected")
    return validate_files(args, schemas)


if __name__ == "__main__":
    sys.exit(main())
