"""Bash completion, generated from the command table: ``eval "$(rootless-groot completion bash)"``.

Commands, their flags and the global ones, a few flag values, image references' schemes and
files, and image ids of the store (``list``, with the ``--store`` of the command line).
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .argv import Command, Opt

_ID_COMMANDS = ("delete", "stats", "bundle")
_IMAGE_COMMANDS = ("create", "run", "pull")
_CHOICES = {"--log-level": "debug info error fatal", "--pull": "always missing never"}


def _flags(opts: list[Opt]) -> str:
    return " ".join(name for o in opts for name in o.names)


def _value_flags(opts: list[Opt]) -> str:
    return " ".join(name for o in opts if o.kind not in ("true", "false") for name in o.names)


def bash(global_opts: list[Opt], commands: dict[str, Command]) -> str:
    all_opts = list(global_opts) + [o for c in commands.values() for o in c.opts]
    value_flags = " ".join(sorted(set(_value_flags(all_opts).split())))
    per_command = "\n".join(f'        {name}) flags="{_flags(c.opts)}" ;;' for name, c in commands.items())
    choices = "\n".join(f'        {flag}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;'
                        for flag, words in _CHOICES.items())
    return f'''# bash completion for rootless-groot: eval "$(rootless-groot completion bash)"
_rootless_groot() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local value_flags=" {value_flags} " cmd="" npos=0 i w flags
    local -a store=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            --) [[ -n $cmd ]] && return ;;
            --store) store=(--store "${{COMP_WORDS[i+1]}}"); ((i++)) ;;
            --store=*) store=(--store "${{w#--store=}}") ;;
            -*) [[ $value_flags == *" $w "* ]] && ((i++)) ;;
            *) if [[ -z $cmd ]]; then cmd=$w; else ((npos++)); fi ;;
        esac
    done
    case "$prev" in
{choices}
    esac
    if [[ $value_flags == *" $prev "* ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "{_flags(global_opts)} --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{' '.join(commands)}" -- "$cur"))
        fi
        return
    fi
    case "$cmd" in
{per_command}
        *) flags="" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags {_flags(global_opts)} --help" -- "$cur"))
        return
    fi
    case "$cmd" in
        {"|".join(_ID_COMMANDS)})
            if ((npos == 0)); then
                local ids
                ids=$("${{COMP_WORDS[0]}}" "${{store[@]}}" list 2>/dev/null | sed -n 's|.*/images/||p')
                COMPREPLY=($(compgen -W "$ids" -- "$cur"))
            else
                COMPREPLY=($(compgen -d -- "$cur"))
            fi ;;
        {"|".join(_IMAGE_COMMANDS)})
            if ((npos == 0)); then
                compopt -o nospace 2>/dev/null
                COMPREPLY=($(compgen -W "docker:// oci://" -- "$cur") $(compgen -f -- "$cur"))
            fi ;;
        completion) COMPREPLY=($(compgen -W "bash" -- "$cur")) ;;
    esac
}}
complete -F _rootless_groot rootless-groot
'''
