"""Helpers for the data-kind tests (test/snakebridge/data_test.exs)."""

import fractions

from snakebridge_worker import register_encoder, struct


class Money:
    def __init__(self, amount, currency="EUR"):
        self.amount = amount
        self.currency = currency

    def __repr__(self):
        return f"Money({self.amount!r}, {self.currency!r})"


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


class Unknown:
    """Registered to a struct name the BEAM has no atom for."""


class Broken:
    """Registered to an encoder that raises."""


def _broken(_value):
    raise RuntimeError("this encoder is broken")


register_encoder(Point, lambda p: struct("SnakeBridge.Test.Point", {"x": p.x, "y": p.y}))
register_encoder(Unknown, lambda _u: struct("SnakeBridge.Test.NoSuchStruct", {"no_such_field_zz": 1}))
register_encoder(fractions.Fraction, lambda f: {"numerator": f.numerator, "denominator": f.denominator})
register_encoder(Broken, _broken)


def describe(value):
    """What the worker received: type, and for arrays dtype, shape and whether writable."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if kind == "numpy.ndarray":
        return (kind, value.dtype.str, list(value.shape), bool(value.flags.writeable))
    if kind == "builtins.memoryview":
        return (kind, value.format, list(value.shape), not value.readonly)
    return kind
