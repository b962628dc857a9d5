"""The release's four tools on a workspace: bash, edit, create, submit.

    result = execute(ws, "edit", args)      # NoSuchToolError for a tool the episode does not offer
    result.feedback                         # the text for the <output> block
    result.patch                            # the submitted patch after a successful submit

As in the release (cwm/rl/swerl/tools.py, default_tools.py, plugins/): every tool runs through the
episode's one bash session, so relative paths are relative to the agent's current directory.
`edit` and `create` are small Python scripts (cwm/agent/plugins/, same texts as the release's
plugins) fed their input by a here-document; `submit` is `cat {path}` and accepts a file that is
not empty and starts with `diff`. Outputs are returned as the session gave them (the release's
backend reads its session with sanitize=False: no trailing newline is stripped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cwm.agent.protocol import NoSuchToolError, submission_feedback
from cwm.agent.workspace import bash_feedback
from cwm.sandbox.shell import ShellOutput

TOOLS = ("bash", "edit", "create", "submit")
TOOLS_NO_PLUGINS = ("bash", "submit")
PLUGIN_EOF = "EOF_938176592"  # tools.py: the here-document's end marker


class AgentWorkspace(Protocol):
    """What the tools need of a workspace (Workspace and DockerWorkspace have it)."""

    plugin_dir: str  # where edit.py and create.py are, as the session sees it

    def bash_result(self, command: str, timeout: float | None = None) -> ShellOutput: ...


@dataclass(frozen=True)
class ToolResult:
    output: str  # the tool's own output (for submit: the patch, or the error)
    success: bool
    feedback: str  # what goes in the observation's <output> block
    patch: str | None = None  # set by a successful submit


def execute(ws: AgentWorkspace, name: str, args: str, plugins: bool = True) -> ToolResult:
    """Run one parsed tool call; NoSuchToolError("Tool 'x' not found.") if the episode lacks it."""
    if name not in (TOOLS if plugins else TOOLS_NO_PLUGINS):
        raise NoSuchToolError(f"Tool '{name}' not found.")
    if name == "bash":
        output, ok = bash_feedback(ws.bash_result(args))
        return ToolResult(output, ok, output)
    if name == "submit":
        return submit(ws, args)
    output, ok = run_plugin(ws, name, args)
    return ToolResult(output, ok, output)


def run_plugin(ws: AgentWorkspace, name: str, args: str) -> tuple[str, bool]:
    """The release's make_python_plugin: the script reads `args` from a here-document in the
    session; success iff the session answered and the script exited 0."""
    script = f"{ws.plugin_dir}/{name}.py"
    out = ws.bash_result(f"${{PYPLUGIN_PYTHON_PATH:-python3}} {script} <<'{PLUGIN_EOF}'\n{args}\n{PLUGIN_EOF}")
    return out["output"], out["status"] == "success" and out["exit_code"] == 0


def submit(ws: AgentWorkspace, args: str) -> ToolResult:
    """The release's submit_diff_file: `cat {path}` in the session."""
    path = args.strip()
    out = ws.bash_result(f"cat {path}")
    error = None
    if out["status"] == "error" or out["exit_code"] != 0:
        error = f"Failed to submit {path}. Make sure it exists and is readable."
    elif out["output"].strip() == "":
        error = f"Failed to submit {path}. It is an empty file."
    elif not out["output"].startswith("diff"):
        error = f"Failed to submit {path}. It is not a valid diff file."
    if error:
        return ToolResult(error, False, error)
    return ToolResult(out["output"], True, submission_feedback(out["output"]), patch=out["output"])
