"""Shell completion scripts for boxctl (bash, fish, zsh), as Toolbx ships for toolbox.

Built from one table of verbs, so the three shells always offer the same thing; box names come
from `boxctl list --quiet` at completion time."""

from __future__ import annotations

# verb -> (what its positional arguments are, its options)
VERBS: dict[str, tuple[str, tuple[str, ...]]] = {
    "create": ("", ("--image", "--home", "--volume", "--env", "--hostname")),
    "enter": ("box", ("--container", "--quiet")),
    "run": ("box", ("--container", "--no-tty", "--quiet")),
    "list": ("", ("--json", "--quiet")),
    "ls": ("", ("--json", "--quiet")),
    "start": ("box", ("--quiet",)),
    "stop": ("box", ()),
    "rm": ("box", ("--force",)),
    "remove": ("box", ("--force",)),
    "apply": ("file", ("--dry-run",)),
    "export": ("box", ("--app", "--bin", "--list", "--delete")),
    "generate-entry": ("box", ()),
    "terminal": ("box", ()),
    "images": ("", ("--json",)),
    "image": ("", ("--quiet",)),
    "pull": ("", ("--quiet",)),
    "rmi": ("", ("--force",)),
    "doctor": ("", ()),
    "completion": ("shell", ()),
}
GLOBAL_OPTIONS = ("--version", "--user", "--help")
SHELLS = ("bash", "fish", "zsh")


def _box_verbs() -> str:
    return " ".join(verb for verb, (kind, _) in VERBS.items() if kind == "box")


def bash() -> str:
    options = "\n".join(f"    {verb}) opts=\"{' '.join(opts)}\" ;;"
                        for verb, (_, opts) in VERBS.items() if opts)
    return f"""# bash completion for boxctl; load with: source <(boxctl completion bash)
_boxctl() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} verb=${{COMP_WORDS[1]}} opts=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{' '.join(VERBS)} {' '.join(GLOBAL_OPTIONS)}" -- "$cur"))
        return
    fi
    case $verb in
{options}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case $verb in
    {_box_verbs().replace(' ', '|')})
        COMPREPLY=($(compgen -W "$(boxctl list --quiet 2>/dev/null)" -- "$cur")) ;;
    completion)
        COMPREPLY=($(compgen -W "{' '.join(SHELLS)}" -- "$cur")) ;;
    apply)
        COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}}
complete -F _boxctl boxctl
"""


def fish() -> str:
    lines = ["# fish completion for boxctl; load with: boxctl completion fish | source",
             "complete -c boxctl -f",
             f"complete -c boxctl -n __fish_use_subcommand -a '{' '.join(VERBS)}'",
             "complete -c boxctl -n __fish_use_subcommand -l user -d 'your own boxd'",
             "complete -c boxctl -n __fish_use_subcommand -l version"]
    lines.append(f"complete -c boxctl -n '__fish_seen_subcommand_from {_box_verbs()}' "
                 "-a '(boxctl list --quiet 2>/dev/null)'")
    lines.append("complete -c boxctl -n '__fish_seen_subcommand_from completion' "
                 f"-a '{' '.join(SHELLS)}'")
    lines.append("complete -c boxctl -n '__fish_seen_subcommand_from apply' -F")
    for verb, (_, opts) in VERBS.items():
        for opt in opts:
            lines.append(f"complete -c boxctl -n '__fish_seen_subcommand_from {verb}' "
                         f"-l {opt[2:]}")
    return "\n".join(lines) + "\n"


def zsh() -> str:
    cases = "\n".join(f"        {verb}) opts=({' '.join(opts)}) ;;"
                      for verb, (_, opts) in VERBS.items() if opts)
    return f"""#compdef boxctl
# zsh completion for boxctl; load with: source <(boxctl completion zsh)
_boxctl() {{
    local -a verbs opts
    verbs=({' '.join(VERBS)})
    if (( CURRENT == 2 )); then
        compadd -- $verbs {' '.join(GLOBAL_OPTIONS)}
        return
    fi
    case $words[2] in
{cases}
    esac
    if [[ $words[CURRENT] == -* ]]; then
        compadd -- $opts
        return
    fi
    case $words[2] in
        {_box_verbs().replace(' ', '|')}) compadd -- ${{(f)"$(boxctl list --quiet 2>/dev/null)"}} ;;
        completion) compadd -- {' '.join(SHELLS)} ;;
        apply) _files ;;
    esac
}}
if [[ $funcstack[1] == _boxctl ]]; then _boxctl "$@"; else compdef _boxctl boxctl; fi
"""


def script(shell: str) -> str:
    return {"bash": bash, "fish": fish, "zsh": zsh}[shell]()
