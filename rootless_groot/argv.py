"""A small declarative command-line parser.

``argparse`` costs ~10 ms per run (its import plus building a parser per subcommand),
which is a third of the budget of a warm ``create``; this does the part we use:
global flags, one command, its flags (``--f V``, ``--f=V``, repeatable, booleans,
integers, choices) and positionals, and help text made from the same table.
"""
from __future__ import annotations

from .errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Opt:
    """One flag. ``kind``: value, int, append, true, false (the last two set ``dest``)."""

    __slots__ = ("names", "dest", "kind", "help", "choices", "metavar")

    def __init__(self, names: str, kind: str = "value", help: str = "", dest: str | None = None,
                 choices: tuple[str, ...] = (), metavar: str = "V"):
        self.names = names.split(",")
        self.dest = dest or self.names[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.help = help
        self.choices = choices
        self.metavar = metavar

    def usage(self) -> str:
        names = ", ".join(self.names)
        return names if self.kind in ("true", "false") else f"{names} {self.metavar}"


class Command:
    """A command: its flags, positional names (``name?`` is optional), or a trailing argv."""

    __slots__ = ("name", "help", "opts", "positionals", "rest")

    def __init__(self, name: str, help: str, opts: list[Opt] = (), positionals: tuple[str, ...] = (),  # type: ignore[assignment]
                 rest: str | None = None):
        self.name = name
        self.help = help
        self.opts = list(opts)
        self.positionals = positionals
        self.rest = rest

    def usage(self) -> str:
        pos = " ".join(f"[<{p[:-1]}>]" if p.endswith("?") else f"<{p}>" for p in self.positionals)
        rest = f" [-- {self.rest.upper()}...]" if self.rest else ""
        return f"{self.name} [options] {pos}".rstrip() + rest


class Args:
    """Parsed values as attributes (a flag not given is None, or [] for repeatable ones)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


def _defaults(opts: list[Opt]) -> dict[str, Any]:
    return {o.dest: None for o in opts}


def _take(opt: Opt, inline: str | None, argv: list[str], i: int, values: dict[str, Any], where: str) -> int:
    """Store ``opt``'s value; return the index of the next argument."""
    if opt.kind in ("true", "false"):
        if inline is not None:
            raise UsageError(f"invalid arguments - {opt.names[0]} takes no value - usage: {where}")
        values[opt.dest] = opt.kind == "true"
        return i
    if inline is None:
        if i >= len(argv):
            raise UsageError(f"invalid arguments - {opt.names[0]} needs a value - usage: {where}")
        inline, i = argv[i], i + 1
    value: Any = inline
    if opt.kind == "int":
        try:
            value = int(inline, 10)
        except ValueError:
            raise UsageError(f"invalid arguments - {opt.names[0]} needs an integer, not `{inline}` - usage: {where}") from None
    if opt.choices and value not in opt.choices:
        raise UsageError(f"invalid arguments - {opt.names[0]} must be one of {', '.join(opt.choices)} - usage: {where}")
    if opt.kind == "append":
        values[opt.dest] = (values[opt.dest] or []) + [value]
    else:
        values[opt.dest] = value
    return i


def _options(argv: list[str], i: int, opts: list[Opt], values: dict[str, Any], where: str,
             positionals: list[str] | None) -> int:
    """Consume flags (and positionals, if a list is given) from ``argv[i:]``; stop at a non-flag
    when ``positionals`` is None (the command name), or at ``--``."""
    by_name = {name: opt for opt in opts for name in opt.names}
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i
        if arg.startswith("-") and arg != "-":
            name, eq, inline = arg.partition("=")
            opt = by_name.get(name)
            if opt is None:
                raise UsageError(f"invalid arguments - unknown flag {name} - usage: {where}")
            i = _take(opt, inline if eq else None, argv, i + 1, values, where)
            continue
        if positionals is None:
            return i
        positionals.append(arg)
        i += 1
    return i


GLOBAL_HELP = ("-h, --help", "--version")


def parse(argv: list[str], global_opts: list[Opt], commands: dict[str, Command]) -> tuple[str | None, Args]:
    """Return (command name, values). ``None`` as the command means: help or version was shown."""
    values = _defaults(global_opts)
    for flag in ("-h", "--help", "--version"):
        if flag in argv[: _first_non_flag(argv, global_opts)]:
            return flag, Args(values)
    i = _options(argv, 0, global_opts, values, "rootless-groot [global options] COMMAND ...", None)
    if i >= len(argv):
        raise UsageError("no command given: see `rootless-groot --help`")
    name = argv[i]
    command = commands.get(name)
    if command is None:
        raise UsageError(f"unknown command `{name}`: see `rootless-groot --help`")
    where = command.usage()
    values.update(_defaults(command.opts))
    rest = argv[i + 1:]
    # Global flags are accepted after the command too (`list --store X`), as podman does.
    own = {n for o in command.opts for n in o.names}
    opts = command.opts + [o for o in global_opts if not own.intersection(o.names)]
    if command.rest:
        j = _first_non_flag(rest, opts)
        if "-h" in rest[:j] or "--help" in rest[:j]:
            return f"help:{name}", Args(values)
        j = _options(rest, 0, opts, values, where, None)
        tail = rest[j:]
        if command.positionals:  # `run [flags] IMAGE [--] CMD...`: what follows IMAGE is the command
            if tail[:1] == ["--"] or not tail:
                raise UsageError(f"invalid arguments - usage: {where}")
            values[command.positionals[0]], tail = tail[0], tail[1:]
        values[command.rest] = tail[1:] if tail[:1] == ["--"] else tail
    else:
        if "-h" in rest or "--help" in rest:
            return f"help:{name}", Args(values)
        positionals = []
        j = _options(rest, 0, opts, values, where, positionals)
        positionals += rest[j + 1:]  # after "--", everything is positional
        required = [p for p in command.positionals if not p.endswith("?")]
        if not len(required) <= len(positionals) <= len(command.positionals):
            raise UsageError(f"invalid arguments - usage: {where}")
        for p_name, value in zip(command.positionals, positionals):
            values[p_name.rstrip("?")] = value
        for p_name in command.positionals[len(positionals):]:
            values[p_name.rstrip("?")] = None
    values["command"] = name
    return name, Args(values)


def _first_non_flag(argv: list[str], opts: list[Opt]) -> int:
    """Index of the first argument that is not a flag or a flag's value (the command name)."""
    takes_value = {n for o in opts if o.kind not in ("true", "false") for n in o.names}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] in takes_value else 1
    return i


def help_text(prog: str, description: str, global_opts: list[Opt], commands: dict[str, Command],
              command: str | None = None) -> str:
    """Help for the whole program, or for one command."""
    if command:
        c = commands[command]
        lines = [f"usage: {prog} [global options] {c.usage()}", "", c.help, ""]
        lines += [f"  {o.usage():<38} {o.help}" for o in c.opts]
        lines += ["", f"Global options (`{prog} --help`) may also come after the command."]
        return "\n".join(lines).rstrip() + "\n"
    lines = [f"usage: {prog} [global options] COMMAND [options] [args]", "", description, "", "global options:"]
    lines += [f"  {o.usage():<38} {o.help}" for o in global_opts]
    lines += ["  -h, --help".ljust(40) + " this help (COMMAND --help: the command's)", "  --version".ljust(40) + " the version",
              "", "commands:"]
    lines += [f"  {c.name:<14} {c.help}" for c in commands.values()]
    return "\n".join(lines) + "\n"
