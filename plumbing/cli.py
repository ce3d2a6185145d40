"""A config dataclass is its own command line: each field, declared once with its default and its
help, is also a flag (train.py's TrainConfig, infer.py's GenConfig).

    @dataclass
    class Config:
        lr: float = flag(2e-5, "peak learning rate")        # --lr 1e-4
        resume: bool = flag(False, "continue the run")      # --resume
    add_flags(parser, Config); cfg = from_flags(Config, parser.parse_args())
"""
import argparse
import dataclasses
import typing


def flag(default, help, **argparse_options):
    """A config field that is also a command-line flag; argparse_options: choices=..."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_options})


def add_flags(parser, config_class):
    """Each field of config_class as a flag of `parser` (a parser or an argument group): max_steps
    is --max-steps, of the field's type (int | None: an int, None meaning "derived"; no default
    shown for None or ""). A bool off by default is a switch (--resume); one on by default can be
    turned off (--no-execute)."""
    types = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        name = "--" + field.name.replace("_", "-")
        options = dict(field.metadata)
        help = options.pop("help")
        kind = types[field.name]
        if kind is bool:
            action = argparse.BooleanOptionalAction if field.default else "store_true"
            parser.add_argument(name, action=action, default=field.default, help=help, **options)
            continue
        kind = next(t for t in typing.get_args(kind) or [kind] if t is not type(None))
        shown = "" if field.default in (None, "") else " (default: %(default)s)"
        parser.add_argument(name, type=kind, default=field.default, help=help + shown, **options)


def from_flags(config_class, namespace):
    """The config of parsed flags (its own checks run: a bad combination raises ValueError)."""
    return config_class(**{f.name: getattr(namespace, f.name)
                           for f in dataclasses.fields(config_class)})
