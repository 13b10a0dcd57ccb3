"""Benchmarks of flaxdistil against PyTorch/transformers (CLIs: scripts/bench.py and
scripts/profile_step.py). Tooling, apart from the library: nothing in flaxdistil imports it.

    measure.py   model FLOPs and device peaks (MFU), interleaved timing, memory, machine facts
    cases.py     inputs, random models, step variants; the flaxdistil step and inference cases
    torch_ref.py the same step and inference in PyTorch/transformers (imports torch)
    suite.py     the sections (training, inference, scaling): cases built, timed, compared
    report.py    the markdown tables and the targets
    profile.py   per-op self time of a step from a jax.profiler trace

A case is compiled, warmed up and measured one at a time; the cases of one comparison are then
timed interleaved, one unit of each in turn, so that load from other processes on a shared machine
falls on all of them alike; medians over the repeats are reported.
"""
