"""The coding agent: tasks, the release's tool protocol, a sandboxed workspace, the loop, trajectories.

Modules: task (the task record, SWE-bench's fields), mutate (`cwm agent tasks`), swebench
(SWE-bench instance/prediction files and log grading); the others name their own area.
"""
