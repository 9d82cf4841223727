import re

import pytest

from rootless_groot.cli import COMMANDS, GLOBAL_OPTS, main
from rootless_groot.argv import parse
from rootless_groot.errors import UsageError


def p(*argv):
    return parse(list(argv), GLOBAL_OPTS, COMMANDS)


def test_garden_style_invocation():
    name, a = p("--store", "/s", "--log-level", "debug", "create", "--disk-limit-size-bytes", "100",
                "--exclude-image-from-quota", "--username", "u", "--password=p", "docker:///busybox", "handle")
    assert name == "create"
    assert (a.store, a.log_level, a.disk_limit_size_bytes, a.exclude_image_from_quota) == ("/s", "debug", 100, True)
    assert (a.username, a.password, a.image, a.id) == ("u", "p", "docker:///busybox", "handle")
    assert a.without_mount is None and a.with_clean is None  # not given: the config file decides


def test_flags_after_positionals_repeatable_and_negative_booleans():
    _, a = p("create", "img", "--insecure-registry", "a:1", "id", "--insecure-registry=b:2", "--with-mount",
             "--without-clean")
    assert a.insecure_registry == ["a:1", "b:2"]
    assert a.without_mount is False and a.without_clean is True and a.with_clean is None


def test_enter_takes_the_rest_verbatim():
    _, a = p("--store", "/s", "enter", "--", "runc", "--root", "/x", "run")
    assert a.cmd == ["runc", "--root", "/x", "run"]
    _, a = p("enter")
    assert a.cmd == []


def test_optional_positional():
    _, a = p("delete")
    assert a.id is None


@pytest.mark.parametrize("argv, message", [
    (["create", "only-one"], "usage: create [options] <image> <id>"),
    (["create", "a", "b", "c"], "usage: create"),
    (["--store"], "--store needs a value"),
    (["list", "--bogus"], "unknown flag --bogus"),
    (["create", "--disk-limit-size-bytes", "lots", "a", "b"], "needs an integer"),
    (["create", "--pull", "sometimes", "a", "b"], "must be one of always, missing, never"),
    (["create", "--without-mount=yes", "a", "b"], "takes no value"),
    (["frobnicate"], "unknown command"),
    ([], "no command given"),
])
def test_usage_errors(argv, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        p(*argv)


def test_errors_are_one_line_on_stdout_with_status_1(capsys):
    assert main(["create", "x"]) == 1
    out, err = capsys.readouterr()
    assert out == "invalid arguments - usage: create [options] <image> <id>\n"


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    assert main(["create", "--help"]) == 0
    assert "--disk-limit-size-bytes N" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rootless-groot ")


def test_an_unexpected_exception_is_still_one_line_on_stdout(capsys, monkeypatch):
    import rootless_groot.cli as cli

    def boom(args, cfg):
        raise ZeroDivisionError("bug\nwith two lines")

    monkeypatch.setitem(cli.HANDLERS, "capacity", boom)
    assert main(["capacity"]) == 1
    out, err = capsys.readouterr()
    assert out == "internal error: ZeroDivisionError: bug with two lines\n"
    assert "Traceback" in err


def test_global_flags_after_the_command():
    _, a = p("list", "--store", "/x", "--log-level=debug")
    assert (a.store, a.log_level) == ("/x", "debug")
    _, a = p("create", "img", "id", "--store", "/y")
    assert (a.store, a.image, a.id) == ("/y", "img", "id")
    _, a = p("enter", "--store", "/z", "--", "ls", "--store")
    assert a.store == "/z" and a.cmd == ["ls", "--store"]


def test_run_image_then_command():
    _, a = p("run", "--rm", "-t", "--env", "A=1", "-e", "B", "--store", "/s", "img", "sh", "-c", "x")
    assert (a.rm, a.tty, a.env, a.store, a.image, a.cmd) == (True, True, ["A=1", "B"], "/s", "img", ["sh", "-c", "x"])
    _, a = p("run", "img", "--", "ls", "-l")
    assert a.cmd == ["ls", "-l"] and a.name is None
    _, a = p("run", "img")
    assert a.cmd == []
    with pytest.raises(UsageError):
        p("run", "--rm")
    assert p("run", "--help")[0] == "help:run"


def test_platform_is_validated():
    from rootless_groot.sources.base import ResolvedImage, check_platform, parse_platform
    from rootless_groot.errors import ImageError

    for bad in ("linux", "linux/amd46", "linus/amd64", "linux//v7"):
        with pytest.raises(ImageError):
            parse_platform(bad)
    amd64 = ResolvedImage([], config={"os": "linux", "architecture": "amd64"})
    check_platform(amd64, parse_platform("linux/amd64"), "img")
    with pytest.raises(ImageError, match="built for linux/amd64, not for the requested platform linux/arm64"):
        check_platform(amd64, parse_platform("linux/arm64"), "img")
    check_platform(ResolvedImage([]), parse_platform("linux/arm64"), "a tarball has no config")
