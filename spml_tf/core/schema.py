"""What the JSON this project writes and reads back must look like: declared once, checked in one place.

A checkpoint's state (state.json: the epoch counter and every stateful
callback's state) and a run's results.json come back from disk, where a
crash, a hand edit or a hostile user may have changed them. Whoever reads
one states its expected shape with the few types below and calls `check`
before using any of it; a value of the wrong type, size or range is a
`SchemaError` naming where it is (`callbacks.apl.rounds[2].epoch: -3 is below
0`), never a KeyError or IndexError later. A stateful callback declares its
`state_schema()`, and the checkpoint checks it: a new callback's state is
checked without new checking code.

    check({"wait": 1, "best": 87.5}, Record({"wait": Integer(0), "best": Number(0, 100, nullable=True)}))
"""

import math


class SchemaError(ValueError):
    """A value that does not have its declared shape; the message starts with where it is."""


def check(value, spec, where="value"):
    """`value` if it has the shape of `spec`, else SchemaError."""
    spec.check(value, where)
    return value


class Integer:
    """An int (not a bool) in [minimum, maximum] (None: unbounded)."""

    def __init__(self, minimum=None, maximum=None):
        self.minimum, self.maximum = minimum, maximum

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: {_shown(value)} is not a whole number")
        _check_range(value, self.minimum, self.maximum, where)


class Number:
    """A finite int or float (not a bool) in [minimum, maximum]; None too when `nullable`."""

    def __init__(self, minimum=None, maximum=None, nullable=False):
        self.minimum, self.maximum, self.nullable = minimum, maximum, nullable

    def check(self, value, where):
        if value is None and self.nullable:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: {_shown(value)} is not a number")
        if not math.isfinite(value):
            raise SchemaError(f"{where}: {value} is not finite")
        _check_range(value, self.minimum, self.maximum, where)


class Boolean:
    def check(self, value, where):
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: {_shown(value)} is not true or false")


class Text:
    """A string, one of `choices` when given."""

    def __init__(self, choices=None, max_length=10_000):
        self.choices, self.max_length = choices, max_length

    def check(self, value, where):
        if not isinstance(value, str):
            raise SchemaError(f"{where}: {_shown(value)} is not a string")
        if len(value) > self.max_length:
            raise SchemaError(f"{where}: a string of {len(value):,} characters (at most {self.max_length:,})")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(f"{where}: {_shown(value)} is not one of {', '.join(map(str, self.choices))}")


class ListOf:
    """A list whose items all have the shape `item`; its length exactly `length`, or within [min, max]."""

    def __init__(self, item, length=None, min_length=0, max_length=None):
        self.item, self.length = item, length
        self.min_length, self.max_length = (length, length) if length is not None else (min_length, max_length)

    def check(self, value, where):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: {_shown(value)} is not a list")
        if len(value) < self.min_length or (self.max_length is not None and len(value) > self.max_length):
            wanted = (f"{self.length}" if self.length is not None else
                      f"{self.min_length} to {self.max_length}" if self.max_length is not None else
                      f"at least {self.min_length}")
            raise SchemaError(f"{where}: a list of {len(value):,} items, not {wanted}")
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")


class Record:
    """A dict with the `fields` (name -> spec), the `optional` ones where present, and any other key only when
    `others` gives their spec."""

    def __init__(self, fields, optional=None, others=None):
        self.fields, self.optional, self.others = fields, optional or {}, others

    def check(self, value, where):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: {_shown(value)} is not a record of named fields")
        missing = [name for name in self.fields if name not in value]
        if missing:
            raise SchemaError(f"{where}: no {missing[0]!r}")
        for name, item in value.items():
            spec = self.fields.get(name) or self.optional.get(name) or self.others
            if spec is None:
                raise SchemaError(f"{where}: an unexpected field {_shown(name)}")
            spec.check(item, f"{where}.{name}")


class MapOf:
    """A dict of string keys to values of the shape `value`, with at most `max_size` entries."""

    def __init__(self, value, max_size=None):
        self.value, self.max_size = value, max_size

    def check(self, value, where):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: {_shown(value)} is not a mapping")
        if self.max_size is not None and len(value) > self.max_size:
            raise SchemaError(f"{where}: {len(value):,} entries, at most {self.max_size:,}")
        for key, item in value.items():
            Text().check(key, f"{where} key")
            self.value.check(item, f"{where}[{key!r}]")


class Nullable:
    """None, or a value of the shape `spec`."""

    def __init__(self, spec):
        self.spec = spec

    def check(self, value, where):
        if value is not None:
            self.spec.check(value, where)


class Anything:
    """Any JSON value (for what the reader does not use)."""

    def check(self, value, where):
        del value, where


def _check_range(value, minimum, maximum, where):
    if minimum is not None and value < minimum:
        raise SchemaError(f"{where}: {value} is below {minimum}")
    if maximum is not None and value > maximum:
        raise SchemaError(f"{where}: {value} is above {maximum}")


def _shown(value):
    """A short description of an untrusted value: small scalars as they are, anything else by its type."""
    if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"a {type(value).__name__}"
